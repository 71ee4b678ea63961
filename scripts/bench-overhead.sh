#!/usr/bin/env bash
# bench-overhead.sh: how much does a running eddy-agent slow loopback TCP down,
# what does it cost itself (CPU, memory), and does it account every byte of
# short-lived connections under churn?
#
# Everything runs on this machine over loopback (127.0.0.0/8); see --help.
# This wrapper builds the release binaries and runs `eddy-loadgen bench`
# (tests/src/bench.rs), which does the measuring and the report.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/bench-overhead.sh [--quick] [--rounds N] [--one-cpu] [--disabled-hooks LIST]
                                 [--hook-set LIST]... [--json PATH] [--no-build]

Builds the release binaries (unless --no-build) and runs `eddy-loadgen bench`, as root, over loopback
only: eddy-agent's cost on loopback TCP (short-lived connection rate, 1 KiB and 128 KiB writes, each as a
ratio against a baseline measured in the same run), its CPU and memory, where a connection's time goes
(each eBPF program, the agent process), its memory with 10,000 live flows and 1,000 new connections a
second, and the share of 40,000 short connections it reports with exact bytes. What is measured, how, and the targets: `eddy-loadgen bench --help`
(tests/src/bench.rs).

Options:
  --quick       short run (2 s per measurement, 3 rounds, 5,000 churn connections)
  --rounds N    baseline/agent rounds per measurement (default 5, --quick 3)
  --one-cpu     everything (load, agent, capture) on one CPU: CPU-bound, steadier ratios
                that include the agent's own CPU
  --disabled-hooks LIST
                run the agent with another hook set: hook names as /status shows them, e.g.
                'tcp_sock counters (live via iter/task_file)' for the per-call byte hooks;
                the report names the kernel and the hook chosen per capability
  --hook-set LIST
                one more agent variant in every round, run with --disabled-hooks LIST; the
                report gives its ratios as rows of their own (repeatable, at most 8), e.g.
                --hook-set 'tcp_sock counters (live via iter/task_file)' for per-call bytes
  --json PATH   also write the results as JSON
  --no-build    use the existing target/x86_64-unknown-linux-gnu/release binaries
  -h, --help    this text

Exit status: 0 all targets met, 1 a target missed, 2 usage or setup error.
Needs: root, cargo (unless --no-build).
Environment: EDDY_AGENT, EDDY_LOADGEN override the binaries' paths.
EOF
}

die() {
    echo "bench-overhead: error: $*" >&2
    exit 2
}

BUILD=1
PASS=()
ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick | --one-cpu) PASS+=("$1") ;;
        --rounds)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]?$ ]] || die "--rounds needs a number from 1 to 99"
            PASS+=("$1" "$2")
            shift
            ;;
        --disabled-hooks | --hook-set | --json)
            [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
            PASS+=("$1" "$2")
            shift
            ;;
        --no-build) BUILD=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
    shift
done

[[ $EUID -eq 0 ]] || die "must run as root (eddy-agent loads eBPF programs); try: sudo $0 ${ARGS[*]}"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AGENT=${EDDY_AGENT:-$REPO/target/x86_64-unknown-linux-gnu/release/eddy-agent}
LOADGEN=${EDDY_LOADGEN:-$REPO/target/x86_64-unknown-linux-gnu/release/eddy-loadgen}

if [[ $BUILD -eq 1 ]]; then
    command -v cargo >/dev/null ||
        die "cargo not found in PATH (sudo resets PATH: try sudo env PATH=\"\$PATH\" $0, or --no-build)"
    echo "bench-overhead: building release binaries" >&2
    (cd "$REPO" && cargo build --release -p eddy-agent -p eddy-tests --bins) ||
        die "cargo build failed"
fi
[[ -x $AGENT ]] || die "$AGENT not found (build it, or drop --no-build)"
[[ -x $LOADGEN ]] || die "$LOADGEN not found (build it, or drop --no-build)"

exec "$LOADGEN" bench --agent "$AGENT" "${PASS[@]}"
