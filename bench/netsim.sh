#!/usr/bin/env bash
# ftx against iperf3 over an emulated long, lossy link: two network namespaces joined by
# tests/netsim (netsim.cpp says why not netem), 25 ms each way and 0.1 % loss by default.
# iperf3 (memory to memory, no integrity check) is what the path can carry at all with one and
# with 8 TCP streams; ftx moves one random file of SIZE_MB MiB, up (`ftx put`, a -> b) and
# down (`ftx get`, b -> a), with -P 1 and -P 8 when ftx has -P (without it: one stream, and
# n/a for 8). Every copy is compared with cmp; the stored or downloaded copy is removed
# before each run. Files live on /dev/shm, so no disk is measured.
#
# Table: median Mbit/s (1e6 bit/s of payload) of RUNS runs; ftx/iperf3 = ftx's median over
# iperf3's at the same stream count and direction; netsim cpu = its share of one core during
# the runs (near 100 %: the emulator, not the path, was the limit). iperf3 runs for IPERF_TIME
# seconds, ftx for as long as its file takes, slow start included: with a small file that
# costs ftx more than iperf3. Under loss-based congestion control a short iperf3 run is also
# flattered by its first seconds (slow start overshoots before the first losses), which a
# long ftx transfer averages away: compare steady states with IPERF_TIME near the time ftx
# takes (docs/benchmarks.md). Both use the namespaces' default congestion control, which a new
# namespace takes from the root namespace (reported below the table).
#
# Usage: sudo bench/netsim.sh  (root: it creates namespaces; nothing is built)
#   FTX (build/ftx), NETSIM (build/netsim), DELAY_MS (25, one way), LOSS (0.001), RATE_MBIT
#   (0: no bottleneck but the CPU), RUNS (3), SIZE_MB (64), IPERF_TIME (10 s), STREAMS (8: the
#   parallel row), STREAM_COUNTS ("1 $STREAMS"), PREFIX (ftxbn: namespaces ftxbna and
#   ftxbnb), CC (the namespaces' TCP
#   congestion control, e.g. reno; default: the root namespace's). SMOKE=1: RUNS=1, SIZE_MB=8,
#   IPERF_TIME=2 unless set, well under a minute (for CI). iperf3, jq and ping are installed
#   with apt-get when missing. A benchmark, not a test: it asserts only that every copy is
#   identical to its source (a wrong copy marks its row "failed"; with STRICT=1 the script
#   then exits 1, which is how ./dev.sh test runs its smoke).
set -euo pipefail

if [ "${SMOKE:-0}" = 1 ]; then
  RUNS=${RUNS:-1} SIZE_MB=${SIZE_MB:-8} IPERF_TIME=${IPERF_TIME:-2}
fi
DELAY_MS=${DELAY_MS:-25} LOSS=${LOSS:-0.001} RATE_MBIT=${RATE_MBIT:-0}
RUNS=${RUNS:-3} SIZE_MB=${SIZE_MB:-64} IPERF_TIME=${IPERF_TIME:-10} STREAMS=${STREAMS:-8}
# The stream counts measured: one, and the parallel row (STREAM_COUNTS=8 skips the slow
# one-stream rows when only the parallel comparison is wanted).
STREAM_COUNTS=${STREAM_COUNTS:-1 $STREAMS}
PREFIX=${PREFIX:-ftxbn}
REPO=$(cd "$(dirname "$0")/.." && pwd)
FTX=$(realpath -m "${FTX:-$REPO/build/ftx}")
NETSIM=$(realpath -m "${NETSIM:-$REPO/build/netsim}")
export NETSIM
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
# shellcheck source=tests/netsim/link.sh
source "$REPO/tests/netsim/link.sh"

[ "$(id -u)" = 0 ] || { say "needs root (it creates network namespaces)"; exit 1; }
[ -x "$FTX" ] || { say "no ftx binary at $FTX (build first, or set FTX)"; exit 1; }
[ -x "$NETSIM" ] || { say "no netsim binary at $NETSIM (build target netsim, or set NETSIM)"; exit 1; }
[ -c /dev/net/tun ] || { say "no /dev/net/tun"; exit 1; }
missing=()
for tool in iperf3:iperf3 jq:jq ping:iputils-ping; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive install_packages "${missing[@]}" || { say "could not install ${missing[*]}"; exit 1; }
fi

PORT=7021
IPERF_PORT=5201
FTX_TIMEOUT=${FTX_TIMEOUT:-$((30 + SIZE_MB * 2))}  # per transfer: 4 Mbit/s at least
# Everything this script starts ends by this time at the latest (netsim's --duration-s).
BUDGET=$((60 + RUNS * 4 * (IPERF_TIME + 20 + FTX_TIMEOUT)))

W=$(mktemp -d /dev/shm/ftx-netsim.XXXX)
SERVERS=()
cleanup() {
  local pid
  for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  netsim_down
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export XDG_CONFIG_HOME=$W/config

# in_a / in_b CMD...: CMD inside namespace a (client side) / b (server side)
in_a() { ip netns exec "$NETSIM_NS_A" "$@"; }
in_b() { ip netns exec "$NETSIM_NS_B" "$@"; }
now_ns() { date +%s%N; }

# listening PID PORT: PID's network namespace has a TCP listener on PORT (waits up to 5 s)
listening() {
  local hex _
  printf -v hex '%04X' "$2"
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || return 1
    awk -v h="$hex" 'FNR > 1 { n = split($2, a, ":"); if (a[n] == h && $4 == "0A") f = 1 } END { exit !f }' \
      "/proc/$1/net/tcp" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# start_in_b SECONDS LOG CMD...: CMD in namespace b, bounded; sets LAST_PID (the timeout
# process, which lives in b, so /proc/LAST_PID/net is b's)
start_in_b() {
  local seconds=$1 log=$2
  shift 2
  ip netns exec "$NETSIM_NS_B" timeout "$seconds" "$@" >"$log" 2>&1 &
  LAST_PID=$!
  SERVERS+=("$LAST_PID")
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

NETSIM_TICKS=0
WALL_NS=0
# measure_start / measure_end: netsim's CPU and the wall time around one run
measure_start() { NETSIM_TICKS=$(cpu_ticks "$NETSIM_PID"); WALL_NS=$(now_ns); }
measure_end() {  # prints "SECONDS NETSIM_CPU_PERCENT"
  local ticks wall
  ticks=$(($(cpu_ticks "$NETSIM_PID") - NETSIM_TICKS))
  wall=$(($(now_ns) - WALL_NS))
  awk -v w="$wall" -v t="$ticks" -v hz="$TICK" 'BEGIN { printf "%.4f %.0f\n", w / 1e9, 100 * t / hz / (w / 1e9) }'
}

# iperf3_run STREAMS up|down: prints "MBIT_PER_S NETSIM_CPU", or nothing when the run failed
iperf3_run() {
  local streams=$1 reverse=() out=$W/iperf.json timing mbit
  [ "$2" = down ] && reverse=(-R)
  start_in_b $((IPERF_TIME + 30)) "$W/iperf-server.log" iperf3 -s -1 -B "$NETSIM_ADDR_B" -p "$IPERF_PORT"
  local server=$LAST_PID
  if ! listening "$server" "$IPERF_PORT"; then
    say "iperf3 server: $(last_line "$W/iperf-server.log")"
    stop "$server"
    return 0
  fi
  measure_start
  if timeout $((IPERF_TIME + 20)) ip netns exec "$NETSIM_NS_A" iperf3 -J -c "$NETSIM_ADDR_B" \
    -p "$IPERF_PORT" -P "$streams" -t "$IPERF_TIME" "${reverse[@]}" >"$out" 2>"$W/iperf.err"; then
    timing=$(measure_end)
    mbit=$(jq -r '.end.sum_received.bits_per_second / 1e6 * 10 | round / 10' "$out")
    echo "$mbit ${timing#* }"
  else
    say "iperf3 -P $streams $2: $(jq -r '.error // empty' "$out" 2>/dev/null) $(last_line "$W/iperf.err")"
  fi
  stop "$server"
}

# ftx_client [ARGS...]: ftx in namespace a, talking to the server in b
ftx_client() { timeout "$FTX_TIMEOUT" ip netns exec "$NETSIM_NS_A" "$FTX" "$@" --server "$NETSIM_ADDR_B:$PORT"; }

# has_parallel put|get: this ftx has -P for that subcommand
has_parallel() { "$FTX" "$1" --help 2>/dev/null | grep -qE '(^|[[:space:],])-P([[:space:],]|$)'; }

# ftx_run STREAMS up|down: one timed put or get; prints "MBIT_PER_S NETSIM_CPU", or nothing
# when it failed or left a wrong copy. STREAMS 0: without -P.
ftx_run() {
  local streams=$1 dir=$2 parallel=() copy timing seconds
  [ "$streams" = 0 ] || parallel=(-P "$streams")
  if [ "$dir" = up ]; then
    ftx_client rm payload >/dev/null 2>&1 || true  # absent is fine
    rm -f "$W/root/payload"
    copy=$W/root/payload
    measure_start
    ftx_client put -q "${parallel[@]}" "$W/payload" payload >/dev/null 2>"$W/ftx.err" || { say "ftx put: $(last_line "$W/ftx.err")"; return 0; }
  else
    rm -f "$W/back"
    copy=$W/back
    measure_start
    ftx_client get -q "${parallel[@]}" payload "$W/back" >/dev/null 2>"$W/ftx.err" || { say "ftx get: $(last_line "$W/ftx.err")"; return 0; }
  fi
  timing=$(measure_end)
  cmp -s "$W/payload" "$copy" || { say "ftx $dir -P $streams: the copy differs from the source"; return 0; }
  seconds=${timing% *}
  awk -v b="$((SIZE_MB * 1048576))" -v s="$seconds" -v c="${timing#* }" 'BEGIN { printf "%.1f %s\n", b * 8 / 1e6 / s, c }'
}

# row TOOL STREAMS DIR: RUNS runs; sets RESULT[TOOL,STREAMS,DIR] and CPU[...] (medians)
declare -A RESULT CPU
row() {
  local tool=$1 streams=$2 dir=$3 run out rates=() cpus=() flag=$2
  if [ "$tool" = ftx ]; then
    local cmd=put
    [ "$dir" = down ] && cmd="get"
    if ! has_parallel "$cmd"; then
      if [ "$streams" != 1 ]; then RESULT[$tool,$streams,$dir]=n/a; return; fi
      flag=0
    fi
  fi
  for run in $(seq "$RUNS"); do
    out=$("${tool}_run" "$flag" "$dir")
    if [ -z "$out" ]; then RESULT[$tool,$streams,$dir]=failed; return; fi
    rates+=("${out% *}") cpus+=("${out#* }")
    say "  $tool -P $streams $dir run $run: ${out% *} Mbit/s, netsim ${out#* }% cpu"
  done
  RESULT[$tool,$streams,$dir]=$(printf '%s\n' "${rates[@]}" | median)
  CPU[$tool,$streams,$dir]=$(printf '%s\n' "${cpus[@]}" | median)
}

ensure_stored() {  # the payload on the server for the downloads, if the uploads left none
  cmp -s "$W/payload" "$W/root/payload" 2>/dev/null && return 0
  ftx_client put -q "$W/payload" payload >/dev/null 2>"$W/ftx.err" || say "ftx put (for the downloads): $(last_line "$W/ftx.err")"
}

# ---------------------------------------------------------------------------------------------
netsim_args=(--delay-ms "$DELAY_MS" --loss "$LOSS" --rate-mbit "$RATE_MBIT" --duration-s "$BUDGET")
netsim_up "$PREFIX" "${netsim_args[@]}" || exit 1
if [ -n "${CC:-}" ]; then
  # Per namespace; only what the root namespace's net.ipv4.tcp_allowed_congestion_control
  # lists (here: reno and bbr; cubic is refused).
  for ns in "$NETSIM_NS_A" "$NETSIM_NS_B"; do
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$CC" || { say "cannot use congestion control $CC"; exit 1; }
  done
fi
head -c "$((SIZE_MB * 1048576))" /dev/urandom >"$W/payload"
mkdir -p "$W/root"
start_in_b "$BUDGET" "$W/serve.log" "$FTX" serve --root "$W/root" --listen "$NETSIM_ADDR_B:$PORT" --min-free 0
FTX_SERVER=$LAST_PID
listening "$FTX_SERVER" "$PORT" || { say "ftx serve did not start: $(last_line "$W/serve.log")"; exit 1; }

for dir in up down; do
  [ "$dir" = down ] && ensure_stored
  for streams in $STREAM_COUNTS; do
    say "$dir, $streams stream(s):"
    row iperf3 "$streams" "$dir"
    row ftx "$streams" "$dir"
  done
done

cc=$(in_a sysctl -n net.ipv4.tcp_congestion_control)
drops=0
for side in "$NETSIM_NS_A $NETSIM_DEV_A" "$NETSIM_NS_B $NETSIM_DEV_B"; do
  read -r ns dev <<<"$side"
  drops=$((drops + $(ip -n "$ns" -s -j link show "$dev" | jq '.[0].stats64.tx.dropped')))
done
stop "$FTX_SERVER"
netsim_down

printf '%-7s %7s %-4s %9s %10s %11s\n' tool streams dir "Mbit/s" ftx/iperf3 "netsim cpu"
for dir in up down; do
  for streams in $STREAM_COUNTS; do
    for tool in iperf3 ftx; do
      rate=${RESULT[$tool,$streams,$dir]:-failed} cpu=${CPU[$tool,$streams,$dir]:-}
      ratio=
      base=${RESULT[iperf3,$streams,$dir]:-}
      if [ "$tool" = ftx ] && [[ $rate =~ ^[0-9.]+$ && $base =~ ^[0-9.]+$ ]]; then
        ratio=$(awk -v a="$rate" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b }')
      fi
      [[ $rate =~ ^[0-9.]+$ ]] && rate=$(printf '%.1f' "$rate")
      printf '%-7s %7s %-4s %9s %10s %11s\n' "$tool" "$streams" "$dir" "$rate" "$ratio" "${cpu:+$cpu%}"
    done
  done
done
echo "link: ${DELAY_MS} ms each way, loss $LOSS, rate ${RATE_MBIT} Mbit/s (0: unlimited); tcp $cc;" \
  "median of $RUNS run(s); iperf3 ${IPERF_TIME} s; ftx ${SIZE_MB} MiB file; $(nproc) cores;" \
  "packets dropped in the TUN devices' queues (the CPU, not netsim's link, was the bottleneck; RATE_MBIT below it avoids that): $drops"
netsim_counters | sed 's/^netsim: /  netsim /'
# STRICT=1 (CI's smoke): a failed or wrong copy, or a failed iperf3 run, fails the script.
if [ "${STRICT:-0}" = 1 ]; then
  for key in "${!RESULT[@]}"; do
    [ "${RESULT[$key]}" = failed ] && { say "STRICT: $key failed"; exit 1; }
  done
fi
exit 0
