#!/usr/bin/env bash
# Faults a server meets in real life, each checked with the real binary: clients and the
# server killed with SIGKILL at random points of transfers, and a disk that fills up
# mid-upload. The promises under test: a final name holds the old file or the complete new
# one, never a mix; an interrupted put or get continues where the verified bytes end when
# run again (the server re-receives at most one chunk it had received before); plain
# staging leftovers are gone after a restart; the server keeps serving.
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
staging_empty() { [ -z "$(find "$1/.ftx-staging" -type f 2>/dev/null)" ]; }
local_part_growing() { find "$1" -maxdepth 1 -name '.*.ftx-partial' -size +1M | grep -q .; }
content_is() { [ "$(cat "$1")" = "$2" ]; }
# A random pause of 0 to 0.3 s: the kill lands at a different point every run (a 1 GiB
# transfer takes longer than that here, so it lands mid-flight).
random_pause() { sleep "0.$(printf '%03d' $((RANDOM % 300)))"; }
# Bytes the server logged receiving for NAME's puts in LOG (aborted and finished alike).
put_bytes() { grep -E "put \"$2\" bytes=" "$1" | sed -nE 's/.* bytes=([0-9]+) .*/\1/p' | awk '{ s += $1 } END { printf "%d\n", s }'; }
get_bytes() { grep -E "get \"$2\" bytes=" "$1" | sed -nE 's/.* bytes=([0-9]+) .*/\1/p' | awk '{ s += $1 } END { printf "%d\n", s }'; }
CHUNK=$((1024 * 1024))
# kill_twice "CONDITION ARGS" COMMAND...: twice, runs COMMAND in the background, waits until
# CONDITION holds (the transfer is under way), waits a random moment and SIGKILLs it. Sets
# `kills` to how many were killed mid-flight (an attempt may finish first: not counted).
kill_twice() {
  local cond=$1; shift
  kills=0
  for _ in 1 2; do
    "$@" >/dev/null 2>&1 &
    CLIENT=$!
    # shellcheck disable=SC2086
    if wait_until 30 $cond; then random_pause; fi
    kill -9 "$CLIENT" 2>/dev/null
    local rc=0; wait "$CLIENT" 2>/dev/null || rc=$?
    [ "$rc" = 137 ] && kills=$((kills + 1))
  done
}

# kill_server_during "CONDITION ARGS" COMMAND...: runs the client COMMAND in the background,
# waits until CONDITION holds, waits a random moment and SIGKILLs the server. Sets `rc` to
# the client's exit status, or to "" when CONDITION never held (the client is then killed).
kill_server_during() {
  local cond=$1; shift
  "$@" >/dev/null 2>&1 &
  local client=$!
  rc=""
  # shellcheck disable=SC2086
  if wait_until 30 $cond; then
    random_pause
    kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""
    rc=0; wait "$client" || rc=$?
  else
    kill -9 "$client" 2>/dev/null; wait "$client" 2>/dev/null
  fi
}

head -c 1G /dev/urandom >"$T/big.bin"  # large enough to be caught mid-flight
SIZE=$(stat -c %s "$T/big.bin")

# ---- 1. client killed mid-put, twice at random points; then the put resumes
R=$T/root
start_server "$R"
echo "old version" >"$T/old.txt"
"$FTX" put "$T/old.txt" victim >/dev/null || bad "initial put"
kill_twice "staging_part_growing $R" "$FTX" put "$T/big.bin" victim
check "at least one put was killed mid-flight" test "$kills" -ge 1
"$FTX" get victim "$T/after-put-kill" >/dev/null && ok || bad "get after client kill"
check "final name still holds the old file after a killed put" content_is "$T/after-put-kill" "old version"
"$FTX" ls --partial | grep -q " victim$" && ok || bad "ls --partial does not show the killed upload"
"$FTX" put "$T/big.bin" victim >/dev/null && ok || bad "put again after killed puts"
grep -q 'put "victim" .*resumed at byte' "$LOG" && ok || bad "the put after the kills did not resume"
"$FTX" get victim "$T/after-resume" >/dev/null && ok || bad "get after the resumed put"
check "the resumed put stored the file byte for byte" cmp -s "$T/after-resume" "$T/big.bin"
# Whatever the server had received when a client died, it received again at most the chunk
# being written then (the bytes before the last checkpoint are kept).
received=$(put_bytes "$LOG" victim)
check "bytes received over all attempts ($received) <= size + $kills chunk(s)" \
  test "$received" -le $((SIZE + 12 + kills * CHUNK))
if staging_empty "$R"; then ok; else bad "no partial upload left after the resumed put"; find "$R/.ftx-staging" -type f -ls >&2; grep victim "$LOG" >&2; fi

# ---- 2. client killed mid-get at random points; then the get resumes
mkdir "$T/dl"
echo "precious" >"$T/dl/local.bin"
kill_twice "local_part_growing $T/dl" "$FTX" get victim "$T/dl/local.bin"
check "at least one get was killed mid-flight" test "$kills" -ge 1
check "the local file is untouched after killed gets" content_is "$T/dl/local.bin" "precious"
before=$(get_bytes "$LOG" victim)
held=$(stat -c %s "$T/dl/.local.bin.ftx-partial" 2>/dev/null || echo 0)
"$FTX" get victim "$T/dl/local.bin" >/dev/null && ok || bad "get again after killed gets"
grep -q 'get "victim" .*resumed at byte' "$LOG" && ok || bad "the get after the kills did not resume"
check "the resumed get completed the file" cmp -s "$T/dl/local.bin" "$T/big.bin"
sent=$(( $(get_bytes "$LOG" victim) - before ))
check "the resumed get moved only the rest ($sent bytes; the killed one held $held)" \
  test "$sent" -le $((SIZE - held + CHUNK))
check "no .ftx- file left beside the target" test -z "$(ls -A "$T/dl" | grep '\.ftx-')"
# ---- 2b. the same with four parallel streams: get -P and put -P resume (the ranges the
# receiver holds are not moved again)
ranges_logged() { grep -c 'get-range "victim" ' "$LOG"; }
total_ranges=$(( (SIZE + CHUNK - 1) / CHUNK ))  # 1 MiB ranges
rm -f "$T/dl/local.bin"
kill_twice "local_part_growing $T/dl" "$FTX" get -P 4 victim "$T/dl/local.bin"
check "at least one get -P was killed mid-flight" test "$kills" -ge 1
before=$(ranges_logged)
"$FTX" get -P 4 victim "$T/dl/local.bin" >/dev/null && ok || bad "get -P again after killed ones"
asked=$(( $(ranges_logged) - before ))
check "the resumed get -P asked for fewer ranges ($asked) than the file has ($total_ranges)" test "$asked" -lt "$total_ranges"
check "the resumed get -P completed the file" cmp -s "$T/dl/local.bin" "$T/big.bin"
check "no .ftx- file left beside the target after get -P" test -z "$(ls -A "$T/dl" | grep '\.ftx-')"
range_bytes() { grep -E "put-range \"$2\" bytes=" "$1" | sed -nE 's/.* bytes=([0-9]+) .*/\1/p' | awk '{ s += $1 } END { printf "%d\n", s }'; }
# A put -P's staging file has its whole size from the start (preallocated): "under way"
# means the server logged a verified range of this attempt.
ranges_ok() { grep -c "put-range \"$1\" .*result=ok" "$LOG"; }
ranges_past_base() { [ "$(ranges_ok "$1")" -gt "$base" ]; }
kills=0
for _ in 1 2; do
  base=$(ranges_ok victim-p)
  "$FTX" put -P 4 "$T/big.bin" victim-p >/dev/null 2>&1 &
  CLIENT=$!
  if wait_until 30 ranges_past_base victim-p; then random_pause; fi
  kill -9 "$CLIENT" 2>/dev/null
  rc=0; wait "$CLIENT" 2>/dev/null || rc=$?
  [ "$rc" = 137 ] && kills=$((kills + 1))
done
check "at least one put -P was killed mid-flight" test "$kills" -ge 1
check "a killed put -P publishes nothing" test ! -e "$R/victim-p"
"$FTX" ls --partial | grep -q " victim-p$" && ok || bad "ls --partial does not show the killed put -P"
"$FTX" put -P 4 "$T/big.bin" victim-p >/dev/null && ok || bad "put -P after killed ones"
grep -q 'put-open "victim-p" .*resumed' "$LOG" && ok || bad "the put -P after the kills did not resume"
check "the resumed put -P stored the file byte for byte" cmp -s "$R/victim-p" "$T/big.bin"
# Each kill costs at most the range each of the 4 streams was receiving (1 MiB ranges):
# every range the server had received whole was kept and not sent again.
received=$(range_bytes "$LOG" victim-p)
check "put -P bytes received over all attempts ($received) <= size + $kills x 4 streams x 1 chunk" \
  test "$received" -le $((SIZE + kills * 4 * CHUNK))
check "nothing left in the staging area after the resumed put -P" wait_until 10 staging_empty "$R"
"$FTX" ping >/dev/null && ok || bad "server stopped serving after killed clients"

# ---- 3. server killed mid-put, then restarted: the partial upload survives and resumes;
# a plain staging leftover (a non-resumable upload's) is removed
"$FTX" rm victim >/dev/null || bad "rm victim"
echo "old version" >"$T/old.txt"
"$FTX" put "$T/old.txt" victim >/dev/null || bad "put old version again"
kill_server_during "staging_part_growing $R" "$FTX" put "$T/big.bin" victim
if [ -n "$rc" ]; then
  if [ "$rc" = 0 ]; then
    echo "note: the put finished before the server was killed" >&2
  else
    check "the client reports the lost connection (exit 3)" test "$rc" = 3
    check "final name holds the old file after a server crash" content_is "$R/victim" "old version"
    echo half >"$R/.ftx-staging/0123-4.part"  # as a plain upload in flight would leave it
    start_server "$R"
    check "restart removed the plain leftover" test ! -e "$R/.ftx-staging/0123-4.part"
    grep -q "removed 1 unfinished upload" "$LOG" && ok || bad "restart did not log the cleanup"
    "$FTX" ls --partial | grep -q " victim$" && ok || bad "the partial upload did not survive the restart"
    "$FTX" get victim "$T/after-crash" >/dev/null && ok || bad "get after restart"
    check "old file intact after crash and restart" content_is "$T/after-crash" "old version"
    "$FTX" put "$T/big.bin" victim >/dev/null && ok || bad "put again after the restart"
    grep -q 'put "victim" .*resumed at byte' "$LOG" && ok || bad "the put after the restart did not resume"
    "$FTX" get victim "$T/after-restart" >/dev/null && ok || bad "get after the resumed put"
    check "the put resumed after a restart stored the file byte for byte" cmp -s "$T/after-restart" "$T/big.bin"
  fi
else
  bad "the upload never started (or finished before the server could be killed)"
fi
[ -n "$SERVER_PID" ] && { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""; }

# ---- 3b. unfinished uploads expire after --partial-ttl without progress
start_server "$T/ttl-root" --partial-ttl 1
"$FTX" put "$T/big.bin" victim >/dev/null 2>&1 &
CLIENT=$!
partial_over_2m() { find "$1/.ftx-staging/partial" -name '*.part' -size +2M 2>/dev/null | grep -q .; }
if wait_until 30 partial_over_2m "$T/ttl-root"; then  # past its first chunk: something to keep
  kill -9 "$CLIENT"; wait "$CLIENT" 2>/dev/null
  no_partials() { [ -z "$("$FTX" ls --partial)" ]; }
  check "an idle partial upload expires after --partial-ttl" wait_until 10 no_partials
  check "its files are gone" staging_empty "$T/ttl-root"
  grep -q "removed 1 partial upload" "$LOG" && ok || bad "expiry not logged"
else
  kill -9 "$CLIENT" 2>/dev/null; bad "the upload never started"
fi
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""

# ---- 3c. server killed mid-put -P, then restarted: the ranges it verified survive and are
# not sent again
PR=$T/pp-root
start_server "$PR"
base=0
kill_server_during "ranges_past_base victim-pp" "$FTX" put -P 4 "$T/big.bin" victim-pp
if [ -n "$rc" ]; then
  if [ "$rc" = 0 ]; then
    echo "note: the put -P finished before the server was killed" >&2
  else
    check "the put -P client reports the lost connection (exit 3)" test "$rc" = 3
    first_log=$LOG
    start_server "$PR"
    "$FTX" ls --partial | grep -q " victim-pp$" && ok || bad "the put -P partial did not survive the restart"
    "$FTX" put -P 4 "$T/big.bin" victim-pp >/dev/null && ok || bad "put -P again after the restart"
    grep -q 'put-open "victim-pp" .*resumed' "$LOG" && ok || bad "the put -P after the restart did not resume"
    check "the put -P resumed after a restart stored the file byte for byte" cmp -s "$PR/victim-pp" "$T/big.bin"
    received=$(( $(range_bytes "$first_log" victim-pp) + $(range_bytes "$LOG" victim-pp) ))
    check "put -P bytes received across the crash ($received) <= size + 4 streams x 1 chunk" \
      test "$received" -le $((SIZE + 4 * CHUNK))
  fi
else
  bad "the put -P never got a range through"
fi
[ -n "$SERVER_PID" ] && { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""; }

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
