#!/usr/bin/env bash
# soak.sh: the agent under its task definition's memory limit, for a long time, under load:
# N concurrent TCP connections, a DNS flood of random names to many servers, /flows, /metrics
# and /dns hammered; prints RSS over time, the drop counters and PASS/FAIL per criterion.
#
# Everything runs over loopback, in a network namespace the soak creates. Not run in CI: the
# scaled-down version is tests/tests/soak_small.rs (same code, eddy_tests::soak).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/soak.sh [--duration 10m] [--connections 100000] [--no-build] [EDDY-LOADGEN SOAK OPTIONS...]

  --duration D       how long the load runs once every connection is open (default 10m)
  --connections N    concurrent TCP connections held, both ends on this host (default 100000)
  --no-build         use the existing target/x86_64-unknown-linux-gnu/release binaries
  other options go to `eddy-loadgen soak` (--dns-rate, --dns-servers, --hammer, --sample-every,
  --task-definition, --agent-env NAME=VALUE; see `eddy-loadgen soak --help`)

What it does: the agent runs in a memory cgroup (v2 memory.max, or the v1 memory controller on
hybrid hosts) limited to the `memory` of task-definitions/eddy-daemon.json, with that task
definition's EDDY_* environment; the connections are held by worker processes (each within
RLIMIT_NOFILE's hard limit); /healthz and /status are probed every 250 ms.
Criteria: every connection held; VmHWM below the limit, no OOM kill; RSS flat after warm-up;
/healthz always 200 in < 1 s; no collector scan missed; the known connection's bytes exact.
Exit status: 0 all criteria met, 1 one failed or the soak failed, 2 usage error.
Needs: root, cargo (unless --no-build). The report is also kept in /tmp/eddy-soak.*.
USAGE
}

die() {
    echo "soak: error: $*" >&2
    exit 2
}

DURATION=10m
CONNECTIONS=100000
BUILD=1
PASS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration | --connections)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            [[ $1 == --duration ]] && DURATION=$2 || CONNECTIONS=$2
            shift
            ;;
        --no-build) BUILD=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) PASS+=("$1") ;;
    esac
    shift
done

[[ $EUID -eq 0 ]] || die "must run as root (eBPF, cgroups, network namespaces); try: sudo $0 $*"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$REPO/target/x86_64-unknown-linux-gnu/release
if [[ $BUILD -eq 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found in PATH (or use --no-build)"
    echo "soak: building release binaries" >&2
    (cd "$REPO" && cargo build --release --workspace --locked --features eddy-agent/fips --bins) ||
        die "cargo build failed"
fi
for b in eddy-agent eddy-loadgen; do
    [[ -x $BIN/$b ]] || die "$BIN/$b not found (build it, or drop --no-build)"
done

# Each worker process holds as many connections as its descriptors allow: raise the soft limit
# to the hard one (raising the hard limit needs CAP_SYS_RESOURCE; more workers do instead).
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/eddy-soak.XXXXXX)
echo "soak: ${CONNECTIONS} connections for ${DURATION}; report and logs in $WORK" >&2
set +e
"$BIN/eddy-loadgen" soak --duration "$DURATION" --connections "$CONNECTIONS" \
    --agent "$BIN/eddy-agent" --task-definition "$REPO/task-definitions/eddy-daemon.json" \
    --json "$WORK/soak.json" "${PASS[@]}" 2> >(tee "$WORK/progress.log" >&2) | tee "$WORK/report.txt"
STATUS=${PIPESTATUS[0]}
set -e
echo "soak: report in $WORK/report.txt, JSON in $WORK/soak.json" >&2
exit "$STATUS"
