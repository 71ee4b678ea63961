#!/usr/bin/env bash
# bench-overhead.sh: how much does a running eddy-agent slow loopback TCP down,
# what does it cost itself (CPU, memory), and does it account every byte of
# short-lived connections under churn?
#
# Everything runs on this machine over loopback (127.0.0.0/8); see --help.
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
Needs: root, cargo (unless --no-build), python3 (standard library only).
Environment: EDDY_AGENT, EDDY_LOADGEN override the binaries' paths.
Logs and raw results are kept in a /tmp/eddy-bench.* directory (printed at the end).
EOF
}

die() {
    echo "bench-overhead: error: $*" >&2
    exit 2
}
note() { echo "bench-overhead: $*" >&2; }

QUICK=0
ROUNDS=""
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]?$ ]] || die "--rounds needs a number from 1 to 99"
            ROUNDS=$2
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

# Loopback rates on a shared 2-core machine vary by +-20% from second to second:
# the more rounds, the steadier the medians.
if [[ $QUICK -eq 1 ]]; then
    DURATION=2
    COUNT=5000
    ROUNDS=${ROUNDS:-3}
else
    DURATION=5
    COUNT=40000
    ROUNDS=${ROUNDS:-5}
fi
LISTEN=127.0.0.1:19780
POLL=1s
# After each measurement: about one poll interval for the agent to drain what
# the load produced; counted in its CPU window, and applied to baseline too.
DRAIN=1.5
SETTLE=2

[[ $EUID -eq 0 ]] || die "must run as root (eddy-agent loads eBPF programs); try: sudo $0 $*"
command -v python3 >/dev/null || die "python3 is required (standard library only)"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AGENT=${EDDY_AGENT:-$REPO/target/x86_64-unknown-linux-gnu/release/eddy-agent}
LOADGEN=${EDDY_LOADGEN:-$REPO/target/x86_64-unknown-linux-gnu/release/eddy-loadgen}

if [[ $BUILD -eq 1 ]]; then
    command -v cargo >/dev/null ||
        die "cargo not found in PATH (sudo resets PATH: try sudo env PATH=\"\$PATH\" $0, or --no-build)"
    note "building release binaries"
    (cd "$REPO" && cargo build --release -p eddy-agent -p eddy-tests --bins) ||
        die "cargo build failed"
fi
[[ -x $AGENT ]] || die "$AGENT not found (build it, or drop --no-build)"
[[ -x $LOADGEN ]] || die "$LOADGEN not found (build it, or drop --no-build)"

if (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN##*:}") 2>/dev/null; then
    die "something already listens on $LISTEN"
fi

WORK=$(mktemp -d /tmp/eddy-bench.XXXXXX)
RESULTS=$WORK/results.tsv # test variant round value errors
CPU=$WORK/cpu.tsv         # test round cpu_ticks window_seconds
MEM=$WORK/mem.tsv         # round vmrss_kib vmhwm_kib
: >"$RESULTS"
: >"$CPU"
: >"$MEM"
CLK_TCK=$(getconf CLK_TCK)

AGENT_PID=""
CAPTURE_PID=""
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
    local pid i
    for pid in $AGENT_PID $CAPTURE_PID; do
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'note "interrupted"; exit 130' INT TERM

# --- helpers -----------------------------------------------------------------

# http_ok URL: true if GET URL answers 2xx within 2 s.
http_ok() {
    local url=$1
    if command -v curl >/dev/null; then
        curl -sf -o /dev/null --max-time 2 "$url"
    else
        python3 - "$url" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)
PY
    fi
}

# json_field FILE FIELD: print one field of the JSON object in FILE.
json_field() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# cpu_ticks PID: utime+stime (clock ticks) of all the process's threads.
cpu_ticks() {
    local stat rest
    local -a f
    stat=$(<"/proc/$1/stat") || return 1
    rest=${stat##*) } # the command name may hold spaces and parentheses
    read -r -a f <<<"$rest"
    # rest starts at field 3 (state): utime is field 14, stime field 15.
    echo $((f[11] + f[12]))
}

# status_kib PID KEY: a "KEY: N kB" line of /proc/PID/status.
status_kib() {
    awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"
}

# foreign_agents: pids of eddy-agent processes this script did not start. Their
# eBPF programs are global (any network namespace): a baseline measured while
# one runs is not a baseline.
foreign_agents() {
    local pid out=""
    for pid in $(pgrep -x eddy-agent || true); do
        [[ $pid == "$AGENT_PID" || $pid == "$CAPTURE_PID" ]] || out+="${out:+ }$pid"
    done
    echo "$out"
}

# wait_quiet: wait (at most 5 minutes) until no other eddy-agent runs.
wait_quiet() {
    local i others
    for ((i = 0; i < 1200; i++)); do
        others=$(foreign_agents)
        [[ -z $others ]] && return 0
        ((i % 40 == 0)) && note "waiting for another eddy-agent to exit (pid $others)"
        sleep 0.25
    done
    die "another eddy-agent (pid $others) ran for 5 minutes; stop it and retry"
}

start_agent() {
    local log=$1 i
    "$AGENT" run --listen "$LISTEN" --poll-interval "$POLL" >"$log" 2>&1 &
    AGENT_PID=$!
    for ((i = 0; i < 120; i++)); do
        if ! kill -0 "$AGENT_PID" 2>/dev/null; then
            tail -n 20 "$log" >&2
            die "eddy-agent exited during startup (log: $log)"
        fi
        if http_ok "http://$LISTEN/readyz"; then
            sleep "$SETTLE"
            return 0
        fi
        sleep 0.5
    done
    tail -n 20 "$log" >&2
    die "eddy-agent not ready after 60 s (log: $log)"
}

stop_agent() {
    local i status=0
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$AGENT_PID" 2>/dev/null; then
        note "warning: eddy-agent (pid $AGENT_PID) ignored SIGTERM for 15 s; killing it"
        kill -KILL "$AGENT_PID" 2>/dev/null || true
    fi
    wait "$AGENT_PID" 2>/dev/null || status=$?
    if [[ $status -ne 0 ]]; then
        note "warning: eddy-agent exited with status $status after SIGTERM"
    fi
    AGENT_PID=""
}

# measure TEST VARIANT ROUND: run one loadgen measurement, record it.
measure() {
    local test=$1 variant=$2 round=$3 out t0 t1 c0 c1 value errors shown
    out=$WORK/$test-$variant-$round.json
    local -a args
    case "$test" in
        conn-rate) args=(conn-rate --duration "${DURATION}s") ;;
        small-write) args=(throughput --write-size 1024 --duration "${DURATION}s") ;;
        large-write) args=(throughput --write-size 131072 --duration "${DURATION}s") ;;
        *) die "unknown test $test" ;;
    esac
    local attempt lg others seen
    for ((attempt = 1; ; attempt++)); do
        wait_quiet
        if [[ $variant == agent ]]; then
            c0=$(cpu_ticks "$AGENT_PID") || die "eddy-agent (pid $AGENT_PID) is gone"
        fi
        t0=$EPOCHREALTIME
        "$LOADGEN" "${args[@]}" >"$out" 2>"$WORK/$test-$variant-$round.err" &
        lg=$!
        seen=""
        # Watch for other eddy-agents while it runs (bash reaps the child
        # itself; a zombie would still answer kill -0).
        while kill -0 "$lg" 2>/dev/null && [[ $(cut -d' ' -f3 "/proc/$lg/stat" 2>/dev/null) != Z ]]; do
            others=$(foreign_agents)
            [[ -z $others ]] || seen=$others
            sleep 0.2
        done
        wait "$lg" ||
            die "eddy-loadgen ${args[*]} failed: $(cat "$WORK/$test-$variant-$round.err")"
        [[ -z $seen ]] && break
        ((attempt < 20)) || die "another eddy-agent (pid $seen) kept running during the measurements"
        note "  another eddy-agent (pid $seen) ran during $variant $test: measuring again"
    done
    sleep "$DRAIN"
    if [[ $variant == agent ]]; then
        c1=$(cpu_ticks "$AGENT_PID") || die "eddy-agent (pid $AGENT_PID) died during $test"
        t1=$EPOCHREALTIME
        printf '%s\t%s\t%s\t%s\n' "$test" "$round" "$((c1 - c0))" \
            "$(python3 -c "print(${t1} - ${t0})")" >>"$CPU"
    fi
    if [[ $test == conn-rate ]]; then
        value=$(json_field "$out" per_second)
    else
        value=$(json_field "$out" bytes_per_second)
    fi
    errors=$(($(json_field "$out" errors) + $(json_field "$out" server_errors)))
    printf '%s\t%s\t%s\t%s\t%s\n' "$test" "$variant" "$round" "$value" "$errors" >>"$RESULTS"
    if [[ $test == conn-rate ]]; then
        shown=$(awk -v v="$value" 'BEGIN { printf "%.0f conn/s", v }')
    else
        shown=$(awk -v v="$value" 'BEGIN { printf "%.0f MiB/s", v / 1048576 }')
    fi
    note "  round $round $variant $test: $shown$([[ $errors == 0 ]] || echo " (errors: $errors)")"
}

run_variant() {
    local variant=$1 round=$2 test
    if [[ $variant == agent ]]; then
        start_agent "$WORK/agent-run-$round.log" # includes the settle time
    else
        sleep "$SETTLE" # the same idle time before the first measurement
    fi
    for test in conn-rate small-write large-write; do
        measure "$test" "$variant" "$round"
    done
    if [[ $variant == agent ]]; then
        printf '%s\t%s\t%s\n' "$round" "$(status_kib "$AGENT_PID" VmRSS)" \
            "$(status_kib "$AGENT_PID" VmHWM)" >>"$MEM"
        stop_agent
    fi
}

# --- 1-4: overhead, alternating baseline and agent -----------------------------

note "work directory: $WORK"
if [[ -n $(foreign_agents) ]]; then
    note "another eddy-agent is running (pid $(foreign_agents)): its eBPF programs would skew the baseline"
    wait_quiet
fi
note "measuring: $ROUNDS round(s) x (conn-rate, 1 KiB writes, 128 KiB writes), ${DURATION} s each"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2 == 1)); then
        run_variant baseline "$round"
        run_variant agent "$round"
    else
        run_variant agent "$round"
        run_variant baseline "$round"
    fi
done

# --- 5: churn under `eddy-agent capture` ---------------------------------------

# Capture long enough for the churn at the agent's measured connection rate,
# three times over, plus margin for the final drain.
CAPTURE_SECS=$(python3 - "$RESULTS" "$COUNT" <<'PY'
import math, statistics, sys
rates = [float(l.split("\t")[3]) for l in open(sys.argv[1])
         if l.split("\t")[:2] == ["conn-rate", "agent"]]
rate = max(statistics.median(rates), 500.0) if rates else 1000.0
print(max(20, math.ceil(3 * int(sys.argv[2]) / rate) + 10))
PY
)
CAP_OUT=$WORK/capture.jsonl
CAP_ERR=$WORK/capture.log
TUPLES=$WORK/churn-tuples.txt
note "churn: eddy-agent capture --duration ${CAPTURE_SECS}s, eddy-loadgen churn --count $COUNT"
wait_quiet
"$AGENT" capture --duration "${CAPTURE_SECS}s" >"$CAP_OUT" 2>"$CAP_ERR" &
CAPTURE_PID=$!
for ((i = 0; ; i++)); do
    grep -q "capture started" "$CAP_ERR" && break
    if ! kill -0 "$CAPTURE_PID" 2>/dev/null; then
        tail -n 20 "$CAP_ERR" >&2
        die "eddy-agent capture exited before 'capture started' (log: $CAP_ERR)"
    fi
    ((i < 600)) || die "no 'capture started' from eddy-agent capture after 60 s (log: $CAP_ERR)"
    sleep 0.1
done
CAP_T0=$EPOCHREALTIME
CAP_C0=$(cpu_ticks "$CAPTURE_PID" || echo 0)
# Stop the churn well before the capture ends, whatever happens.
"$LOADGEN" churn --count "$COUNT" --out "$TUPLES" --max-duration "$((CAPTURE_SECS - 5))s" \
    >"$WORK/churn.json" 2>"$WORK/churn.err" ||
    die "eddy-loadgen churn failed: $(cat "$WORK/churn.err")"
CHURN_ELAPSED=$(python3 -c "print(f'{$EPOCHREALTIME - $CAP_T0:.1f}')")
CAP_C1=$(cpu_ticks "$CAPTURE_PID" || echo "$CAP_C0")
CAP_HWM=$(status_kib "$CAPTURE_PID" VmHWM || echo 0)
note "churn: $(cat "$WORK/churn.json")"
note "churn done ${CHURN_ELAPSED}s after 'capture started'; waiting for the capture to end"
for ((i = 0; i < (CAPTURE_SECS + 60) * 2; i++)); do
    kill -0 "$CAPTURE_PID" 2>/dev/null || break
    sleep 0.5
done
if kill -0 "$CAPTURE_PID" 2>/dev/null; then
    note "warning: eddy-agent capture still running 60 s after its --duration; sending SIGINT"
    kill -INT "$CAPTURE_PID" 2>/dev/null || true
    sleep 5
    kill -KILL "$CAPTURE_PID" 2>/dev/null || true
fi
CAP_STATUS=0
wait "$CAPTURE_PID" 2>/dev/null || CAP_STATUS=$?
CAPTURE_PID=""
[[ $CAP_STATUS -eq 0 ]] || note "warning: eddy-agent capture exited with status $CAP_STATUS (log: $CAP_ERR)"

# --- report ------------------------------------------------------------------

set +e
python3 - "$WORK" "$COUNT" "$CLK_TCK" "$DURATION" "$ROUNDS" "$CHURN_ELAPSED" "$CAPTURE_SECS" \
    "$((CAP_C1 - CAP_C0))" "$CAP_HWM" "$CAP_STATUS" <<'PY'
import collections, json, statistics, sys

work, count, clk_tck, duration, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
churn_elapsed, capture_secs = float(sys.argv[6]), int(sys.argv[7])
cap_ticks, cap_hwm_kib, cap_status = int(sys.argv[8]), int(sys.argv[9] or 0), int(sys.argv[10])

# ---- overhead
vals = collections.defaultdict(dict)   # (test, variant) -> {round: value}
errs = collections.Counter()
for line in open(f"{work}/results.tsv"):
    test, variant, rnd, value, e = line.rstrip("\n").split("\t")
    vals[(test, variant)][int(rnd)] = float(value)
    errs[(test, variant)] += int(e)

tests = [
    ("conn-rate", "connection rate", "conn/s", 0.95),
    ("small-write", "small-write (1 KiB)", "MiB/s", 0.95),
    ("large-write", "large-write (128 KiB)", "MiB/s", 0.99),
]

def fmt(v, unit):
    if unit == "MiB/s":
        return f"{v / 2**20:,.0f} MiB/s"
    return f"{v:,.0f} conn/s"

failed = False
rows, summary = [], []
for key, label, unit, target in tests:
    b, a = vals[(key, "baseline")], vals[(key, "agent")]
    common = sorted(set(a) & set(b))
    ratios = [a[r] / b[r] for r in common if b[r] > 0]
    ratio = statistics.median(ratios) if ratios else float("nan")
    ok = bool(ratios) and ratio >= target
    failed |= not ok
    spread = f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"
    e = errs[(key, "baseline")] + errs[(key, "agent")]
    rows.append((label, fmt(statistics.median(b.values()), unit), fmt(statistics.median(a.values()), unit),
                 f"{ratio:.3f}x", spread, f">= {target:.2f}x", "ok" if ok else "MISSED", str(e)))
    summary.append(f"{label.split(' (')[0]}: agent/baseline = {ratio:.2f}x (target >= {target:.2f}x)"
                   f"{'' if ok else '  <-- MISSED'}")

# ---- agent CPU and memory
cpu = collections.defaultdict(lambda: [0, 0.0])
for line in open(f"{work}/cpu.tsv"):
    test, rnd, ticks, secs = line.rstrip("\n").split("\t")
    cpu[test][0] += int(ticks)
    cpu[test][1] += float(secs)
def pct(t, s):
    return 100.0 * t / clk_tck / s if s > 0 else float("nan")
tot_t = sum(v[0] for v in cpu.values()); tot_s = sum(v[1] for v in cpu.values())
rss = [(int(l.split("\t")[1] or 0), int(l.split("\t")[2] or 0)) for l in open(f"{work}/mem.tsv")]
rss_now = statistics.median(r for r, _ in rss) / 1024 if rss else float("nan")
rss_hwm = max(h for _, h in rss) / 1024 if rss else float("nan")

# ---- churn
churn = json.load(open(f"{work}/churn.json"))
expected = collections.Counter()
for line in open(f"{work}/churn-tuples.txt"):
    local, remote = line.split()
    la, lp = local.rsplit(":", 1); ra, rp = remote.rsplit(":", 1)
    expected[(la, int(lp), ra, int(rp))] += 1

def norm_addr(a):
    a = str(a)
    return a[7:] if a.startswith("::ffff:") else a

records = collections.defaultdict(list)   # 4-tuple -> [(sent, received)]
n_lines = n_bad = n_tcp_out = 0
first_record = None
for line in open(f"{work}/capture.jsonl"):
    line = line.strip()
    if not line:
        continue
    n_lines += 1
    try:
        r = json.loads(line)
        if first_record is None:
            first_record = line
        if r.get("protocol") != "tcp" or r.get("direction") != "outgoing":
            continue
        key = (norm_addr(r["local"]["addr"]), int(r["local"]["port"]),
               norm_addr(r["remote"]["addr"]), int(r["remote"]["port"]))
        records[key].append((r.get("bytes_sent"), r.get("bytes_received")))
        n_tcp_out += 1
    except (ValueError, KeyError, TypeError, AttributeError):
        n_bad += 1

exact = wrong = 0
wrong_kinds = collections.Counter()
for key, n in expected.items():
    recs = records.get(key, [])
    good = sum(1 for s, r in recs if s == 100 and r == 200)
    matched = min(n, good)
    bad = [(s, r) for s, r in recs if not (s == 100 and r == 200)]
    exact += matched
    wrong += min(n - matched, len(bad))
    wrong_kinds.update(bad[: n - matched])
share = 100.0 * exact / count
churn_ok = exact == count
failed |= not churn_ok

# ---- print
print()
print(f"Eddy overhead benchmark: {rounds} round(s) x {duration} s per measurement, loopback, "
      f"agent = eddy-agent run --poll-interval 1s")
print("(medians; ratio = median of the per-round agent/baseline ratios, spread = their min-max)")
print()
hdr = ("measurement", "baseline", "agent", "ratio", "spread", "target", "", "errors")
w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
for r in [hdr] + rows:
    print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip())
print()
for s in summary:
    print(s)
print(f"churn exact share: {share:.2f}% ({exact}/{count} connections with bytes_sent=100, "
      f"bytes_received=200) (target 100%){'' if churn_ok else '  <-- MISSED'}")
print(f"agent CPU: {pct(tot_t, tot_s):.1f}% of one core over the measured windows "
      f"(conn-rate {pct(*cpu['conn-rate']):.1f}%, small-write {pct(*cpu['small-write']):.1f}%, "
      f"large-write {pct(*cpu['large-write']):.1f}%; user-space only, eBPF time is charged to the traffic)")
print(f"agent RSS: {rss_now:.1f} MiB VmRSS after the measurements (median of rounds), "
      f"{rss_hwm:.1f} MiB VmHWM peak")
print()
print(f"churn details: loadgen {churn['connections']}/{churn['requested']} connections in "
      f"{churn['seconds']} s ({churn['per_second']:,.0f}/s), loadgen errors {churn['errors']}+{churn['server_errors']}, "
      f"repeated 4-tuples {churn['repeated_tuples']}; done {churn_elapsed} s into a {capture_secs} s capture")
print(f"  capture: {n_lines} records ({n_tcp_out} tcp outgoing, {n_bad} unparsable), exit status {cap_status}, "
      f"CPU during churn {cap_ticks / clk_tck:.2f} s, VmHWM {cap_hwm_kib / 1024:.1f} MiB")
print(f"  of {count}: exact {exact}, wrong byte counts {wrong}, no record {count - exact - wrong}")
if wrong_kinds:
    print("  wrong (bytes_sent, bytes_received), most common: " +
          ", ".join(f"{k} x{v}" for k, v in wrong_kinds.most_common(5)))
if exact == 0 and first_record:
    print(f"  no match at all; first capture line for reference: {first_record[:300]}")
if churn["errors"] or churn["server_errors"] or churn["truncated"]:
    print(f"  note: loadgen did not complete every connection: {churn.get('error_samples')}"
          f"{' (truncated by --max-duration)' if churn['truncated'] else ''}")
print()
print("RESULT: all targets met" if not failed else "RESULT: some targets MISSED")
sys.exit(1 if failed else 0)
PY
STATUS=$?
set -e
echo "raw results and logs: $WORK"
exit "$STATUS"
