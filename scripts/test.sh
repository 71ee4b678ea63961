#!/usr/bin/env bash
# Installs the test prerequisites (Debian 12, as root) and runs every check and test:
# formatting, clippy (-D warnings), unit tests, the privileged integration tests in
# tests/ (network namespaces, real eBPF programs) and the kernel matrix (5.10, 6.1,
# 6.12 under qemu). Tests that need something this machine lacks print "SKIP <test>: <reason>".
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

scripts/install-deps.sh test
# moto, the AWS CLI and cfn-lint (PyPI) for the deploy-artifact tests, in venvs under $EDDY_TOOLS_DIR.
scripts/install-aws-tools.sh
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: not root: the privileged integration tests will be skipped (run with sudo to include them)" >&2
fi

cargo fmt --all --check
# One feature set for every step, so that nothing (aws-sdk-ec2 above all) is compiled twice: the whole
# workspace, with the agent's FIPS TLS client (the FIPS proxy builds the AWS-LC FIPS module anyway).
features=(--workspace --locked --features eddy-agent/fips)
cargo clippy "${features[@]}" --all-targets -- -D warnings
# The integration tests run the real binaries: build them first.
cargo build "${features[@]}" --bins
cargo test "${features[@]}"
# The same binaries on the kernels ECS instances run (5.10, 6.1, 6.12) under qemu: see README "Kernel matrix".
if [ "$(id -u)" -eq 0 ]; then
  scripts/kernel-matrix.sh --no-build --out target/kernel-matrix
elif [ -n "${EDDY_TEST_NO_SKIP:-}" ]; then
  echo "test.sh: the kernel matrix needs root (qemu, apt) and EDDY_TEST_NO_SKIP is set" >&2
  exit 1
else
  echo "SKIP kernel-matrix: not root (it installs qemu and fetches kernels with apt)" >&2
fi
