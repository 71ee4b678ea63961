#!/usr/bin/env bash
# Installs the test prerequisites (Debian 12, as root) and runs every check and test:
# formatting, clippy (-D warnings), unit tests, the privileged integration tests in
# tests/ (network namespaces, real eBPF programs) and the kernel matrix (5.10, 6.1,
# 6.12 under qemu, x86-64 and arm64). Tests that need something this machine lacks print "SKIP <test>: <reason>".
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

scripts/install-deps.sh test
# moto, the AWS CLI and cfn-lint (PyPI) for the deploy-artifact tests, in venvs under $EDDY_TOOLS_DIR.
scripts/install-aws-tools.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: not root: the privileged integration tests will be skipped (run as root, e.g. with sudo, to include them)" >&2
fi

cargo fmt --all --check
# One feature set for every step, so that nothing (aws-sdk-ec2 above all) is compiled twice: the whole
# workspace, with the agent's FIPS TLS client (the FIPS proxy builds the AWS-LC FIPS module anyway).
features=(--workspace --locked --features eddy-agent/fips)
cargo clippy "${features[@]}" --all-targets -- -D warnings
# The integration tests run the real binaries: build them first.
cargo build "${features[@]}" --bins
# The arm64 (Graviton) binaries, cross-built: the multi-arch image test packs them and the arm64 kernel
# matrix below boots them. Needs root for its Debian packages; without it the arm64 parts skip.
if [ "$(id -u)" -eq 0 ]; then
  scripts/cross-build.sh --debug
else
  echo "SKIP cross-build: not root (it installs gcc-aarch64-linux-gnu and Debian's rustc-web with apt)" >&2
fi
cargo test "${features[@]}"
# The same binaries on the kernels ECS instances run (5.10, 6.1, 6.12) under qemu: see README "Kernel matrix".
if [ "$(id -u)" -eq 0 ]; then
  scripts/kernel-matrix.sh --no-build --out target/kernel-matrix
  # The fallbacks, forced on kernels that would pick better hooks: fexit byte hooks with DNS over TCP copied
  # beside the UDP function hooks (the cgroup_skb programs for TCP only: 6.1 without task helpers, 6.12 with
  # the pid); the cgroup_skb UDP programs with the pid only and the socket iterator that finds sockets by
  # their inode (6.12); sockops lifecycle + kprobe bytes + UDP programs without task helpers + kprobe UDP
  # senders (6.1, 6.12).
  udp_functions='fentry/ip_send_skb+ip6_send_skb+__udp_enqueue_schedule_skb'
  scripts/kernel-matrix.sh --no-build --kernels 6.1,6.12 --cgroup-v1 none --out target/kernel-matrix-fexit \
    --agent-arg --dns-tcp --agent-arg on --agent-arg --disabled-hooks \
    --agent-arg 'tcp_sock counters (live via iter/task_file),tp_btf/sock_send_length+sock_recv_length'
  scripts/kernel-matrix.sh --no-build --kernels 6.12 --cgroup-v1 none --out target/kernel-matrix-udp-packets \
    --agent-arg --disabled-hooks --agent-arg "$udp_functions,iter/task_file,iter/task_file (probe reads)"
  scripts/kernel-matrix.sh --no-build --kernels 6.1,6.12 --cgroup-v1 none --out target/kernel-matrix-fallbacks \
    --agent-arg --disabled-hooks \
    --agent-arg "tp_btf/inet_sock_set_state+tcp_destroy_sock,tcp_sock counters (live via iter/task_file),tp_btf/sock_send_length+sock_recv_length,fexit/tcp_sendmsg+tcp_recvmsg,$udp_functions,cgroup_skb/ingress+egress,cgroup_skb/ingress+egress (pid only),fexit/udp_sendmsg+udpv6_sendmsg"
  # The same scenarios on arm64 (Graviton): qemu-system-aarch64 (TCG) on Debian's cloud-arm64 5.10, 6.1, 6.12.
  scripts/kernel-matrix.sh --no-build --arch arm64 --out target/kernel-matrix-arm64
elif [ -n "${EDDY_TEST_NO_SKIP:-}" ]; then
  echo "test.sh: the kernel matrix needs root (qemu, apt) and EDDY_TEST_NO_SKIP is set" >&2
  exit 1
else
  echo "SKIP kernel-matrix: not root (it installs qemu and fetches kernels with apt)" >&2
fi
