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
Usage: scripts/bench-overhead.sh [--quick] [--rounds N] [--no-build]

Measures eddy-agent's overhead in one run, as root, over loopback only:
  1. short-lived connection rate  (eddy-loadgen conn-rate)
  2. small-write throughput, 1 KiB writes   (eddy-loadgen throughput)
  3. large-write throughput, 128 KiB writes (eddy-loadgen throughput)
     each without the agent (baseline) and with
     `eddy-agent run --listen 127.0.0.1:19780 --poll-interval 1s` running,
     alternating baseline/agent over N rounds (the order flips every round);
     figures are medians, ratios the median of the per-round agent/baseline ratios
  4. the agent's CPU (utime+stime from /proc/PID/stat over the measured windows,
     as % of one core) and memory (VmRSS, VmHWM from /proc/PID/status)
  5. churn: `eddy-agent capture` while `eddy-loadgen churn` opens COUNT short
     connections (client sends 100 B, server answers 200 B); the share of them
     whose client-side record (tcp, outgoing) has bytes_sent=100, bytes_received=200

Options:
  --quick       2 s per measurement, 3 rounds, churn --count 5000
                (default: 5 s, 5 rounds, 40000; about 5 minutes)
  --rounds N    baseline/agent rounds per measurement (default 5, --quick 3)
  --no-build    use the existing target/x86_64-unknown-linux-gnu/release binaries
  -h, --help    this text

Targets: connection rate >= 0.95x, small-write >= 0.95x, large-write >= 0.99x,
churn exact share 100%.
Exit status: 0 all targets met, 1 a target missed, 2 usage or setup error.
Needs: root, cargo (unless --no-build).
Environment: EDDY_AGENT, EDDY_LOADGEN override the binaries' paths.
Logs and raw results are kept in a /tmp/eddy-bench.* directory (printed at the end).
The measuring is `eddy-loadgen bench` (tests/src/bench.rs).
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
        --quick) PASS+=("$1") ;;
        --rounds)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]?$ ]] || die "--rounds needs a number from 1 to 99"
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
