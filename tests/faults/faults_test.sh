#!/usr/bin/env bash
# Faults a server meets in real life, each checked with the real binary: clients and the
# server killed with SIGKILL in the middle of transfers, and a disk that fills up mid-upload.
# The promise under test: a final name holds the old file or the complete new one, never a
# mix; staging leftovers are gone after a restart; the server keeps serving.
# Usage: faults_test.sh PATH/TO/ftx
set -u
FTX=$(realpath "$1")
T=$(mktemp -d "${TMPDIR:-/tmp}/ftx-faults-XXXXXX")
SERVER_PID=""
MOUNTED=""
passed=0
failed=0
serial=0

cleanup() {
  [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "$MOUNTED" ] && umount "$MOUNTED" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
check() { local what=$1; shift; if "$@"; then ok; else bad "$what"; fi; }

# wait_until SECONDS COMMAND...: polls the condition every 10 ms; false on time-out.
wait_until() {
  local limit=$(( $1 * 100 )); shift
  for _ in $(seq "$limit"); do "$@" && return 0; sleep 0.01; done
  return 1
}

# start_server ROOT [serve options]: sets SERVER_PID, FTX_SERVER and LOG.
start_server() {
  local root=$1; shift
  serial=$((serial + 1))
  LOG=$T/serve-$serial.log
  "$FTX" serve --root "$root" --listen 127.0.0.1:0 --threads 2 "$@" 2>"$LOG" &
  SERVER_PID=$!
  local port=""
  for _ in $(seq 1000); do
    port=$(sed -nE 's/.* on 127\.0\.0\.1:([0-9]+) with .*/\1/p' "$LOG")
    [ -n "$port" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.01
  done
  [ -n "$port" ] || { echo "server did not start: $(cat "$LOG")" >&2; exit 1; }
  export FTX_SERVER=127.0.0.1:$port
}

staging_part_growing() { find "$1/.ftx-staging" -name '*.part' -size +0 2>/dev/null | grep -q .; }
staging_empty() { [ -z "$(ls -A "$1/.ftx-staging" 2>/dev/null)" ]; }
local_part_growing() { find "$1" -maxdepth 1 -name '.*.ftx-*.part' -size +0 | grep -q .; }
content_is() { [ "$(cat "$1")" = "$2" ]; }

head -c 1G /dev/zero >"$T/big.bin"  # large enough to be caught mid-flight

# ---- 1. client killed mid-put
R=$T/root
start_server "$R"
echo "old version" >"$T/old.txt"
"$FTX" put "$T/old.txt" victim >/dev/null || bad "initial put"
"$FTX" put "$T/big.bin" victim >/dev/null 2>&1 &
CLIENT=$!
if wait_until 30 staging_part_growing "$R"; then
  kill -9 "$CLIENT"; wait "$CLIENT" 2>/dev/null
  check "server removed the killed client's staging file" wait_until 10 staging_empty "$R"
  "$FTX" get victim "$T/after-put-kill" >/dev/null && ok || bad "get after client kill"
  check "final name still holds the old file after a killed put" content_is "$T/after-put-kill" "old version"
else
  kill -9 "$CLIENT" 2>/dev/null; bad "the upload never started (or finished before it could be killed)"
fi

# ---- 2. client killed mid-get
"$FTX" put "$T/big.bin" big >/dev/null || bad "put big"
mkdir "$T/dl"
echo "precious" >"$T/dl/local.bin"
"$FTX" get big "$T/dl/local.bin" >/dev/null 2>&1 &
CLIENT=$!
if wait_until 30 local_part_growing "$T/dl"; then
  kill -9 "$CLIENT"; wait "$CLIENT" 2>/dev/null
  check "the local file is untouched after a killed get" content_is "$T/dl/local.bin" "precious"
  "$FTX" get big "$T/dl/local.bin" >/dev/null && ok || bad "get again after a killed get"
  check "the second get completed the file" cmp -s "$T/dl/local.bin" "$T/big.bin"
  check "the killed get's staging file is gone after the next get" test -z "$(ls -A "$T/dl" | grep '\.ftx-')"
else
  kill -9 "$CLIENT" 2>/dev/null; bad "the download never started (or finished before it could be killed)"
fi
"$FTX" ping >/dev/null && ok || bad "server stopped serving after killed clients"

# ---- 3. server killed mid-put, then restarted
"$FTX" put "$T/big.bin" victim >/dev/null 2>"$T/put-err" &
CLIENT=$!
if wait_until 30 staging_part_growing "$R"; then
  kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
  rc=0; wait "$CLIENT" || rc=$?
  check "the client reports the lost connection (exit 3)" test "$rc" = 3
  check "final name holds the old file after a server crash" content_is "$R/victim" "old version"
  check "the crash left a staging file (the restart must clean it)" staging_part_growing "$R"
  start_server "$R"
  check "restart removed the leftover" staging_empty "$R"
  grep -q "removed 1 unfinished upload" "$LOG" && ok || bad "restart did not log the cleanup"
  "$FTX" get victim "$T/after-crash" >/dev/null && ok || bad "get after restart"
  check "old file intact after crash and restart" content_is "$T/after-crash" "old version"
else
  kill -9 "$CLIENT" 2>/dev/null; bad "the upload never started (or finished before the server could be killed)"
fi
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""

# ---- 4. a full disk. (a) A 24 MiB tmpfs, where this process may mount one: an upload that
# cannot fit is refused before its body. (b) Writes failing mid-upload: RLIMIT_FSIZE of
# 24 MiB on the server (EFBIG past it, SIGXFSZ ignored) fails the write of a 40 MB upload
# after the free-space guard let it through; works without privileges.
head -c 4000000 /dev/urandom >"$T/small-old.bin"
head -c 40000000 /dev/urandom >"$T/too-big.bin"
SMALL=$T/small
mkdir -p "$SMALL"
if mount -t tmpfs -o size=24m tmpfs "$SMALL" 2>/dev/null; then
  MOUNTED=$SMALL
  start_server "$SMALL/root" --min-free 0
  "$FTX" put "$T/small-old.bin" kept.bin >/dev/null || bad "put onto the small filesystem"
  rc=0; "$FTX" put "$T/too-big.bin" kept.bin >/dev/null 2>"$T/full-err" || rc=$?
  check "an upload that cannot fit fails with exit 5" test "$rc" = 5
  grep -q "not enough free space" "$T/full-err" && ok || bad "free-space message: $(cat "$T/full-err")"
  grep -qE 'put "kept.bin" bytes=0 .* result=no-space' "$LOG" && ok || bad "not refused before the body"
  check "old file intact on the full filesystem" cmp -s "$SMALL/root/kept.bin" "$T/small-old.bin"
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
else
  echo "note: cannot mount a tmpfs here; the free-space guard is covered by the integration tests" >&2
fi

FS=$T/fsize-root
serial=$((serial + 1)); LOG=$T/serve-$serial.log
( ulimit -f $((24 * 1024)); trap '' XFSZ; exec "$FTX" serve --root "$FS" --listen 127.0.0.1:0 --min-free 0 ) 2>"$LOG" &
SERVER_PID=$!
for _ in $(seq 1000); do grep -q ' with ' "$LOG" && break; sleep 0.01; done
export FTX_SERVER=127.0.0.1:$(sed -nE 's/.* on 127\.0\.0\.1:([0-9]+) with .*/\1/p' "$LOG")
"$FTX" put "$T/small-old.bin" kept.bin >/dev/null || bad "put before the limit"
rc=0; "$FTX" put "$T/too-big.bin" kept.bin >/dev/null 2>"$T/full-err" || rc=$?
check "a put whose writes fail midway fails with exit 5" test "$rc" = 5
grep -q "ran out of space" "$T/full-err" && ok || bad "mid-upload message: $(cat "$T/full-err")"
grep -qE 'put "kept.bin" bytes=40000000 .* result=no-space' "$LOG" && ok || bad "no mid-upload failure logged"
check "the failed upload left no staging file" staging_empty "$FS"
"$FTX" get kept.bin "$T/kept-back" >/dev/null && ok || bad "get after the failed upload"
check "the old file survived" cmp -s "$T/kept-back" "$T/small-old.bin"
"$FTX" put "$T/old.txt" after.txt >/dev/null && ok || bad "the server does not serve after a failed upload"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""

echo "faults: $passed passed, $failed failed"
[ "$failed" = 0 ]
