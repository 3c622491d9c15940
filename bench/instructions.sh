#!/usr/bin/env bash
# Instructions per MiB moved, for `ftx put` and `ftx get` of one file, client and server
# apart, counted by valgrind's callgrind. Unlike seconds, instruction counts do not drift with
# the machine's other load: the same binary and inputs give (nearly) the same figure, so a
# change that makes a transfer do more work shows up here even on a noisy machine.
#
# What is counted: user-space instructions of the ftx process only (the kernel's share of
# recv/write/sendfile is not), minus a baseline run of the same process that moves nothing
# (start-up, connect, one ping), divided by the MiB moved. Under valgrind OpenSSL sees a CPU
# without SHA-NI and hashes with its AVX2/SSSE3 code, so the hashing share is larger than on
# the real CPU; compare figures from this script with each other, not with perf counters.
#
# Usage: bench/instructions.sh [SIZE_MIB (64)]
#   FTX=path/to/ftx (default build/apps/ftx/ftx, else build/ftx); SMOKE=1 means SIZE_MIB=4.
# valgrind is installed with apt-get when missing. A benchmark, not a test: it asserts nothing
# but that each copy is identical to its source.
set -euo pipefail

if [ "${SMOKE:-0}" = 1 ]; then SIZE_MIB=${SIZE_MIB:-4}; fi
SIZE_MIB=${1:-${SIZE_MIB:-64}}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
FTX=$(ftx_binary "$REPO")
[ -x "$FTX" ] || { echo "no ftx binary at $FTX (build first, or set FTX)" >&2; exit 1; }

if ! command -v valgrind >/dev/null; then
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  "${sudo[@]}" apt-get install -y -qq valgrind >&2 ||
    { "${sudo[@]}" apt-get update -qq >&2 && "${sudo[@]}" apt-get install -y -qq valgrind >&2; }
fi

W=$(mktemp -d /dev/shm/ftx-instr.XXXX)
SERVER=
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export XDG_CONFIG_HOME=$W/config

CG=(valgrind --tool=callgrind --callgrind-out-file=/dev/null --dump-instr=no --cache-sim=no)

# ir LOGFILE: the "Collected" instruction count callgrind printed
ir() { sed -nE 's/.*Collected : ([0-9]+).*/\1/p' "$1" | tail -n 1; }

PORT=
# start_server NAME [valgrind]: a server on a free port, under callgrind when asked
start_server() {
  local name=$1 under=() _
  [ "${2:-}" = valgrind ] && under=("${CG[@]}" --log-file="$W/$name.cg")
  "${under[@]}" "$FTX" serve --root "$W/root" --listen 127.0.0.1:0 --min-free 0 --threads 1 \
    >/dev/null 2>"$W/$name.log" &
  SERVER=$!
  PORT=
  for _ in $(seq 600); do  # valgrind starts slowly: up to 30 s
    PORT=$(sed -nE 's/.*serving .* on 127\.0\.0\.1:([0-9]+).*/\1/p' "$W/$name.log" | head -n 1)
    [ -n "$PORT" ] && return 0
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.05
  done
  echo "server $name did not start: $(tail -n 1 "$W/$name.log")" >&2
  exit 1
}
stop_server() {  # SIGTERM: a clean exit, so callgrind writes its totals
  kill -TERM "$SERVER"
  wait "$SERVER" || true
  SERVER=
}
client() {  # client NAME ARGS...: one ftx client command under callgrind
  local name=$1; shift
  "${CG[@]}" --log-file="$W/$name.cg" "$FTX" "$@" -s "127.0.0.1:$PORT" >/dev/null 2>"$W/$name.err" ||
    { echo "ftx $* failed: $(tail -n 1 "$W/$name.err")" >&2; exit 1; }
}

head -c "$((SIZE_MIB << 20))" /dev/urandom >"$W/payload"
mkdir -p "$W/root"

echo "counting instructions for $SIZE_MIB MiB (valgrind runs ~50x slower than the CPU)" >&2
# Baselines: a server that answers one ping; a client that pings.
start_server base valgrind
client ping-client ping
stop_server

# Upload: client and server both counted.
start_server put valgrind
client put-client put -q "$W/payload" payload
stop_server
cmp -s "$W/payload" "$W/root/payload" || { echo "the uploaded copy differs" >&2; exit 1; }

# Download of the file just stored (its digest is cached, as after any ftx upload).
start_server get valgrind
client get-client get -q payload "$W/back"
stop_server
cmp -s "$W/payload" "$W/back" || { echo "the downloaded copy differs" >&2; exit 1; }

per_mib() { awk -v a="$1" -v b="$2" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", (a - b) / m }'; }
printf '%-4s %-7s %16s %14s\n' op side "instructions" "per MiB"
for op in put get; do
  for side in client server; do
    if [ "$side" = client ]; then total=$(ir "$W/$op-client.cg"); base=$(ir "$W/ping-client.cg")
    else total=$(ir "$W/$op.cg"); base=$(ir "$W/base.cg"); fi
    printf '%-4s %-7s %16s %14s\n' "$op" "$side" "$total" "$(per_mib "$total" "$base")"
  done
done
echo "$SIZE_MIB MiB over 127.0.0.1, user-space instructions (callgrind) minus a run that moves nothing"
