#!/usr/bin/env bash
# ftx with and without TLS on loopback, same files, same run: median of N runs of a put and a
# get of one file, MB/s and the TLS/plain ratio. Roots and files live on /dev/shm so the
# disk is not what is measured. A benchmark, not a test: it asserts nothing.
# Usage: bench/tls_bench.sh PATH/TO/ftx [SIZE_MIB (1024)] [RUNS (3)]
set -euo pipefail
FTX=$(realpath "$1")
SIZE_MIB=${2:-1024}
RUNS=${3:-3}
W=$(mktemp -d /dev/shm/ftx-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$W"; }
trap cleanup EXIT
export XDG_CONFIG_HOME=$W/config

head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$W/payload"

start() {  # start NAME [serve options]: sets PORT
  local name=$1; shift
  "$FTX" serve --root "$W/$name-root" --listen 127.0.0.1:0 --min-free 0 "$@" >/dev/null 2>"$W/$name.log" &
  PIDS+=($!)
  for _ in $(seq 200); do
    PORT=$(sed -nE 's/.* on 127\.0\.0\.1:([0-9]+) with .*/\1/p' "$W/$name.log")
    [ -n "$PORT" ] && return
    sleep 0.05
  done
  echo "server $name did not start" >&2; exit 1
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
seconds() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo "scale=4; ($t1-$t0)/1000000000" | bc; }

start plain; plain=$PORT
start tls --tls; tls=$PORT
"$FTX" ping -s "127.0.0.1:$tls" --tls --accept-new >/dev/null

declare -A result
for mode in plain tls; do
  port=$([ $mode = plain ] && echo "$plain" || echo "$tls")
  flags=(-s "127.0.0.1:$port"); [ $mode = tls ] && flags+=(--tls)
  # Each run starts without the target, so freeing the previous copy is not timed.
  result[$mode,put]=$(for _ in $(seq "$RUNS"); do
    rm -f "$W/$mode-root/payload"; seconds "$FTX" put "$W/payload" payload "${flags[@]}"; done | median)
  result[$mode,get]=$(for _ in $(seq "$RUNS"); do
    rm -f "$W/back-$mode"; seconds "$FTX" get payload "$W/back-$mode" "${flags[@]}"; done | median)
  cmp -s "$W/payload" "$W/back-$mode" || { echo "copy over $mode differs" >&2; exit 1; }
done

printf '%-6s %-4s %8s %10s %8s\n' mode dir "median s" "MB/s" "ratio"
for dir in put get; do
  for mode in plain tls; do
    s=${result[$mode,$dir]}
    mbs=$(echo "scale=0; $SIZE_MIB * 1.048576 / $s" | bc)
    ratio=$(echo "scale=2; ${result[plain,$dir]} / $s" | bc)
    printf '%-6s %-4s %8s %10s %8s\n' "$mode" "$dir" "$s" "$mbs" "$ratio"
  done
done
echo "payload ${SIZE_MIB} MiB, median of $RUNS runs, roots on /dev/shm, $(nproc) cores; ratio = plain time / this time"
