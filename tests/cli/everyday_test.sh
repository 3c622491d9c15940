#!/usr/bin/env bash
# Everyday use of the built `ftx` binary, end to end against real servers on 127.0.0.1:
# folders (put -r / get -r), one failing file in a batch, ls -l PATH, stat, rm / mv / mkdir,
# a read-only server, --json, FTX_* variables, no progress bar off a terminal, and the
# server's text and JSON log lines, a put -r cut short by a server stop, a put -r
# without the token a server wants, and --skip-identical re-runs.
# Usage: everyday_test.sh PATH/TO/ftx
set -euo pipefail
FTX=$(realpath "$1")
T=$(mktemp -d "${TMPDIR:-/tmp}/ftx-everyday-XXXXXX")
export XDG_CONFIG_HOME=$T/config  # TLS pins (known_servers) go here, not into the user's
PIDS=()  # servers this script started
passed=0
failed=0

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$T"
}
trap cleanup EXIT

# Nothing from the caller's environment may change what ftx does here.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^FTX_' || true)

die() { echo "FATAL: $*" >&2; exit 1; }
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
check() {  # check DESCRIPTION COMMAND...: the command must succeed
  local what=$1; shift
  if "$@"; then ok; else bad "$what"; fi
}

# expect_exit CODE COMMAND...: runs it with stdout in $T/out and stderr in $T/err, checks
# the exit code, and for a failure that stderr is "ftx: ..." lines only.
expect_exit() {
  local want=$1; shift
  local got=0
  "$@" >"$T/out" 2>"$T/err" || got=$?
  if [ "$got" != "$want" ]; then bad "exit $got (want $want): $* -- $(cat "$T/err")"; return 0; fi
  if [ "$want" != 0 ] && { [ ! -s "$T/err" ] || grep -qv '^ftx: ' "$T/err"; }; then
    bad "stderr of '$*' is not 'ftx: ' lines: $(cat "$T/err")"; return 0
  fi
  ok
}

in_dir() { local dir=$1; shift; (cd "$dir" && exec "$@"); }
not() { ! "$@"; }  # for check: the command must fail

# jcheck FILE EXPR: every line of FILE is one JSON object and the Python expression EXPR
# is true; in EXPR, L is the list of objects and N maps "name" (or "remote") to its object.
jcheck() {
  python3 - "$@" <<'PY'
import json, sys
path, expr = sys.argv[1], sys.argv[2]
lines = open(path, encoding="utf-8").read().splitlines()
try:
    L = [json.loads(line) for line in lines]
except ValueError as e:
    sys.exit(f"  not JSON lines ({e}): {lines!r}")
if not L or not all(isinstance(o, dict) for o in L):
    sys.exit(f"  not one JSON object a line: {lines!r}")
N = {o.get("name", o.get("remote")): o for o in L}
if not eval("(" + expr + "\n)", {"L": L, "N": N}):
    sys.exit(f"  false: {expr}\n  on: {lines!r}")
PY
}
jexpect() {  # jexpect DESCRIPTION FILE EXPR
  if jcheck "$2" "$3"; then ok; else bad "$1"; fi
}

# start_server LOG ARGS...: `ftx serve ARGS` on a free port of 127.0.0.1; returns once it
# answers a ping, with SERVER_PID and SERVER (HOST:PORT) set. No sleeps: the log is read
# until the start-up line names the port (bounded by a 10 s deadline).
start_server() {
  local log=$1; shift
  : >"$log"
  "$FTX" serve --listen 127.0.0.1:0 --threads 2 "$@" 2>"$log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER=""
  local deadline=$((${EPOCHREALTIME/./} + 10000000)) line
  while [ -z "$SERVER" ]; do
    while IFS= read -r line; do
      if [[ $line =~ \ on\ (127\.0\.0\.1:[0-9]+)\ with\  ]]; then SERVER=${BASH_REMATCH[1]}; break; fi
    done <"$log"
    [ -n "$SERVER" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "server did not start: $(cat "$log")"
    [ "${EPOCHREALTIME/./}" -lt "$deadline" ] || die "server start-up line missing after 10 s: $(cat "$log")"
  done
  local i tls=()
  [[ " $* " != *" --tls "* ]] || tls=(--tls --accept-new)  # pinned in $XDG_CONFIG_HOME ($T/config)
  for i in $(seq 50); do
    if "$FTX" ping -s "$SERVER" "${tls[@]}" >/dev/null 2>&1; then return 0; fi
  done
  die "server on $SERVER does not answer ping"
}

# make_tree DIR FOLDERS FILES BYTES: DIR/dNN/fNNNN, FILES files of BYTES random bytes in each
# of FOLDERS folders.
make_tree() {
  python3 - "$@" <<'PY'
import os, sys
root, folders, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for d in range(folders):
    os.makedirs(f"{root}/d{d:02d}")
    for f in range(files):
        with open(f"{root}/d{d:02d}/f{f:04d}", "wb") as out:
            out.write(os.urandom(size))
PY
}

# The local files' listing as `ftx ls` prints it (-l: with SHA-256), names relative to $PWD.
expected_ls() {
  local long=$1; shift
  local f sha
  while IFS= read -r f; do
    sha=""
    [ "$long" = long ] && sha="$(sha256sum <"$f" | cut -c1-64)  "
    printf '%12d  %s  %s%s\n' "$(stat -c %s "$f")" "$(date -u -d "@$(stat -c %Y "$f")" +%Y-%m-%dT%H:%M:%SZ)" \
      "$sha" "$f"
  done < <(find "$@" -type f | LC_ALL=C sort)
}

# A server root as it looks from outside: every entry with type, size, mtime and mode.
snapshot() { find "$1" -mindepth 1 ! -path "$1/.ftx-staging" -printf '%P|%y|%s|%T@|%m\n' | LC_ALL=C sort; }

# ---- the main server (text log); FTX_SERVER names it from here on
start_server "$T/serve1.log" --root "$T/root1"
S1=$SERVER
S1_PID=$SERVER_PID
export FTX_SERVER=$S1

# =================================================================== 1. put -r / get -r
P=$T/tree/photos
mkdir -p "$P/sub/deeper" "$P/empty" "$P/with space"
echo hello >"$P/a.txt"
printf '#!/bin/sh\necho hi\n' >"$P/sub/run.sh"
chmod 755 "$P/sub/run.sh"
echo old >"$P/sub/deeper/old.txt"
touch -d '2001-02-03 04:05:06 UTC' "$P/sub/deeper/old.txt"
: >"$P/zero.bin"
head -c 3000000 /dev/urandom >"$P/sub/big.bin"
echo "spaced out" >"$P/with space/my file.txt"
ln -s a.txt "$P/link.txt"

# REMOTE_DIR defaults to the folder's base name; the symlink is skipped with a notice.
expect_exit 0 in_dir "$T/tree" "$FTX" put -r photos
grep -qE '^stored 6 of 6 files \(.*\) under photos in [0-9.]+ s$' "$T/out" && ok || bad "put -r summary: $(cat "$T/out")"
[ "$(cat "$T/err")" = "ftx: skipping symbolic link photos/link.txt" ] && ok || bad "put -r symlink notice: $(cat "$T/err")"
check "put -r stored the tree" diff -r -x link.txt "$P" "$T/root1/photos"
check "the symlink was not uploaded" test ! -e "$T/root1/photos/link.txt"
check "the empty folder was created on the server" test -d "$T/root1/photos/empty"

# LOCAL_DIR defaults to the remote folder's base name.
mkdir "$T/dl"
expect_exit 0 in_dir "$T/dl" "$FTX" get -r photos
grep -qE '^saved 6 of 6 files \(.*\) into photos in [0-9.]+ s$' "$T/out" && ok || bad "get -r summary: $(cat "$T/out")"
check "get -r wrote nothing on stderr" test ! -s "$T/err"
G=$T/dl/photos
check "get -r tree identical (but the symlink)" diff -r -x link.txt "$P" "$G"
check "no symlink downloaded" test ! -e "$G/link.txt" -a ! -L "$G/link.txt"
check "empty folder recreated" test -d "$G/empty" -a -z "$(ls -A "$G/empty")"
check "0-byte file" test -f "$G/zero.bin" -a ! -s "$G/zero.bin"
check "exec bit kept" test "$(stat -c %A "$G/sub/run.sh" | cut -c1-4)" = "-rwx"
check "no exec bit added" test "$(stat -c %A "$G/a.txt" | cut -c1-4)" = "-rw-"
while IFS= read -r f; do
  [ "$(stat -c %Y "$P/$f")" = "$(stat -c %Y "$G/$f")" ] && ok || bad "mtime of $f: $(stat -c %Y "$P/$f") vs $(stat -c %Y "$G/$f")"
done < <(cd "$P" && find . -type f)
check "old mtime kept" test "$(stat -c %Y "$G/sub/deeper/old.txt")" = "$(date -d '2001-02-03 04:05:06 UTC' +%s)"

# Explicit REMOTE_DIR and LOCAL_DIR; a trailing slash; a sub-folder's default local name.
expect_exit 0 "$FTX" put -r "$P/" backup/2026
grep -q ' under backup/2026 in ' "$T/out" && ok || bad "put -r DIR REMOTE_DIR: $(cat "$T/out")"
expect_exit 0 "$FTX" get -r backup/2026 "$T/dl2"
check "put -r DIR REMOTE_DIR / get -r REMOTE_DIR LOCAL_DIR" diff -r -x link.txt "$P" "$T/dl2"
expect_exit 0 in_dir "$T/dl" "$FTX" get -r backup/2026/sub
check "get -r a/b/c defaults to ./c" diff -r "$P/sub" "$T/dl/sub"
expect_exit 0 in_dir "$T/tree" "$FTX" put -r photos/
grep -q ' under photos in ' "$T/out" && ok || bad "put -r photos/ remote name: $(cat "$T/out")"

# "." is everything.
expect_exit 0 "$FTX" get -r . "$T/all"
check "get -r . fetched photos" diff -r -x link.txt "$P" "$T/all/photos"
check "get -r . fetched backup/2026" diff -r -x link.txt "$P" "$T/all/backup/2026"
check "get -r . fetched nothing else" test "$(ls -A "$T/all" | tr '\n' ' ')" = "backup photos "

# A wide tree under a low descriptor limit: the walk holds one folder open at a time (it
# opened every folder it had seen), and a FIFO is skipped with a notice, not read.
W=$T/wide/w
for i in $(seq -w 1 150); do mkdir -p "$W/d$i" && echo "$i" >"$W/d$i/f"; done
mkfifo "$W/d001/pipe"
expect_exit 0 bash -c 'ulimit -n 40 && exec "$@"' _ "$FTX" put -r "$W" wide
grep -qE '^stored 150 of 150 files ' "$T/out" && ok || bad "put -r of 150 folders under ulimit -n 40: $(cat "$T/out")"
[ "$(cat "$T/err")" = "ftx: skipping $W/d001/pipe: not a regular file or folder" ] && ok ||
  bad "put -r FIFO notice: $(cat "$T/err")"
check "put -r stored the wide tree" diff -r -x pipe "$W" "$T/root1/wide"

# put -r walks its folder as the files go (one folder at a time), yet they go -- and are
# reported -- in the order of their remote names, as one sort of the whole list puts them:
# "a b", "a-1" and "a.txt" before the files in folder "a". Empty folders found on the way
# are made at the end.
O=$T/order
mkdir -p "$O/a/b" "$O/a/empty" "$O/e1/e2"
for f in z a/z a.txt a-1 "a b" a/b/f; do echo "$f" >"$O/$f"; done
expect_exit 0 "$FTX" put -r "$O" order --json
jexpect "put -r: files reported in the order of their remote names" "$T/out" "
  [o['remote'] for o in L[:-1]] == ['order/a b', 'order/a-1', 'order/a.txt', 'order/a/b/f', 'order/a/z', 'order/z']
  and L[-1]['summary'] is True and L[-1]['files'] == 6"
check "put -r stored the tree walked as it went" diff -r "$O" "$T/root1/order"
check "put -r made the empty folders found on the way" test -d "$T/root1/order/a/empty" -a -d "$T/root1/order/e1/e2"
# An empty folder the server refuses to make (a file in the way): the files went first and
# are stored; the refusal is said, the summary counts it, and the exit code is 5.
mkdir -p "$T/order2/in-the-way/sub"
echo kept >"$T/order2/f"
mkdir -p "$T/root1/order2" && echo file >"$T/root1/order2/in-the-way"
expect_exit 5 "$FTX" put -r "$T/order2" order2
check "a refused MKDIR is said" grep -qx 'ftx: server refused mkdir "order2/in-the-way": "order2/in-the-way" already exists' "$T/err"
grep -qE '^stored 1 of 1 files \(.*\) under order2 in [0-9.]+ s, an empty folder not made$' "$T/out" && ok ||
  bad "put -r summary with a refused MKDIR: $(cat "$T/out")"
check "the files went before the refused MKDIR" cmp -s "$T/order2/f" "$T/root1/order2/f"

# A folder the walk cannot read ends the batch there: what went before it is stored and
# reported, then the error (exit 7), and nothing after it is sent. Root reads every folder,
# so as root the client runs as nobody (setpriv), where it can.
U=$T/unreadable
mkdir -p "$U/a" "$U/b" "$U/c"
for d in a b c; do echo "$d" >"$U/$d/f"; done
chmod 000 "$U/b"
as_other=()
if [ "$(id -u)" = 0 ]; then
  as_other=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  chmod o+x "$T" && chmod -R o+rX "$U/a" "$U/c" && chmod o+rx "$U"
fi
if [ "$(id -u)" = 0 ] && ! "${as_other[@]}" test -x "$FTX" -a -r "$U/a/f" 2>/dev/null; then
  echo "note: the unreadable-folder check needs setpriv and an ftx binary that nobody may run: skipped" >&2
else
  expect_exit 7 "${as_other[@]}" "$FTX" put -r "$U" unread
  check "an unreadable folder is named" grep -qx "ftx: cannot read folder $U/b: Permission denied" "$T/err"
  check "the files before it were stored" cmp -s "$U/a/f" "$T/root1/unread/a/f"
  check "the files after it were not sent" test ! -e "$T/root1/unread/c"
fi
chmod 700 "$U/b"
rm -rf "$T/root1/order" "$T/root1/order2" "$T/root1/unread"  # the listings below count what root1 holds

# The same tree over 3 connections each way (-P with -r): every file once, the same summary,
# one JSON object per file.
expect_exit 0 "$FTX" put -r -P 3 "$W" wide3 --json
check "put -r -P 3 stored the wide tree" diff -r -x pipe "$W" "$T/root1/wide3"
[ "$(grep -c '"op":"put"' "$T/out")" = 151 ] && ok || bad "put -r -P 3: 150 files + summary: $(head -c 300 "$T/out")"
[ "$(grep -o '"remote":"[^"]*"' "$T/out" | sort -u | wc -l)" = 150 ] && ok || bad "put -r -P 3 reported a file twice"
expect_exit 0 "$FTX" get -r -P 3 wide3 "$T/wide3"
grep -qE '^saved 150 of 150 files .* into ' "$T/out" && ok || bad "get -r -P 3 summary: $(cat "$T/out")"
check "get -r -P 3 fetched the wide tree" diff -r -x pipe "$W" "$T/wide3"
rm -rf "$T/root1/wide" "$T/root1/wide3"  # out of the listings checked below

# Without -r a folder is a local I/O error, as before -r existed.
expect_exit 7 "$FTX" put "$P"
expect_exit 7 "$FTX" put "$P" somewhere
check "nothing stored by a refused folder put" test ! -e "$T/root1/somewhere"

# =================================================================== 3. ls [-l] [PATH]
(cd "$T/tree" && expected_ls short photos) >"$T/ls.want"
(cd "$T/tree" && expected_ls long photos) >"$T/ls-l.want"
expect_exit 0 "$FTX" ls photos
check "ls photos: size  mtime  name, exactly" cmp -s "$T/ls.want" "$T/out"
expect_exit 0 "$FTX" ls
grep -q '^ *4  2001-02-03T04:05:06Z  photos/sub/deeper/old.txt$' "$T/out" && ok || bad "ls line: $(cat "$T/out")"
check "ls lists photos/ and backup/2026/" test "$(grep -c '' "$T/out")" = 12
check "ls (no PATH) includes the photos lines" cmp -s "$T/ls.want" <(grep '  photos/' "$T/out")
expect_exit 0 "$FTX" ls -l photos
check "ls -l photos: size  mtime  sha256  name = sha256sum" cmp -s "$T/ls-l.want" "$T/out"
expect_exit 0 "$FTX" ls photos/
check "ls photos/ = ls photos" cmp -s "$T/ls.want" "$T/out"
expect_exit 0 "$FTX" ls photos/sub
check "ls PATH restricts to the folder" cmp -s <(grep '  photos/sub/' "$T/ls.want") "$T/out"
expect_exit 0 "$FTX" ls -l photos/sub/big.bin
check "ls FILE lists that file only" cmp -s <(grep '  photos/sub/big.bin$' "$T/ls-l.want") "$T/out"
expect_exit 4 "$FTX" ls photos/nope
expect_exit 4 "$FTX" ls nope

# =================================================================== 4. stat
run_sha=$(sha256sum <"$P/sub/run.sh" | cut -c1-64)
big_sha=$(sha256sum <"$P/sub/big.bin" | cut -c1-64)
run_ns=$(stat -c %.9Y "$P/sub/run.sh")
expect_exit 0 "$FTX" stat photos/sub/run.sh
grep -qE '^size +18( |$)' "$T/out" && ok || bad "stat size line: $(cat "$T/out")"
grep -qx "mtime   $(date -u -d "@${run_ns%.*}" +%Y-%m-%dT%H:%M:%S).${run_ns#*.}Z" "$T/out" && ok ||
  bad "stat mtime line (want ${run_ns}): $(cat "$T/out")"
grep -qx "sha256  $run_sha" "$T/out" && ok || bad "stat sha256 line: $(cat "$T/out")"
expect_exit 0 "$FTX" stat photos/sub/big.bin
grep -qx "sha256  $big_sha" "$T/out" && ok || bad "stat sha256 of the 3 MB file: $(cat "$T/out")"
expect_exit 0 "$FTX" stat --json photos/sub/run.sh
jexpect "stat --json fields" "$T/out" "len(L) == 1 and L[0]['name'] == 'photos/sub/run.sh' and L[0]['type'] == 'file'
  and L[0]['size'] == 18 and L[0]['mtime_ns'] == ${run_ns/./} and L[0]['executable'] is True
  and L[0]['sha256'] == '$run_sha' and L[0]['mtime'].startswith('$(date -u -d "@${run_ns%.*}" +%Y-%m-%dT%H:%M:%S)')"
expect_exit 4 "$FTX" stat photos/nope
expect_exit 4 "$FTX" stat --json nope
jexpect "stat --json of a missing name" "$T/out" "len(L) == 1 and L[0]['ok'] is False and L[0]['exit_code'] == 4"

# =================================================================== 5. rm, mv, mkdir
for i in 1 2 3; do echo "content $i" >"$T/f$i"; done
for i in 1 2 3; do expect_exit 0 "$FTX" put "$T/f$i" "w/f$i"; done
expect_exit 0 "$FTX" put "$T/f1" w/full/x
W=$T/root1/w
expect_exit 0 "$FTX" mkdir w/emptyd
check "mkdir made the folder" test -d "$W/emptyd"
expect_exit 4 "$FTX" rm w/f1 w/nope w/emptyd
check "rm: the missing name is named" grep -q '"w/nope"' "$T/err"
check "rm: the other names are still removed" test ! -e "$W/f1" -a ! -e "$W/emptyd"
grep -qx 'removed w/f1' "$T/out" && grep -qx 'removed w/emptyd' "$T/out" && ok || bad "rm output: $(cat "$T/out")"
expect_exit 5 "$FTX" rm w/full
check "rm refused a non-empty folder" test -f "$W/full/x"
expect_exit 0 "$FTX" rm w/f2
check "rm removed the file" test ! -e "$W/f2"

expect_exit 0 "$FTX" mv w/f3 w/f3b
check "mv renamed" test ! -e "$W/f3" -a "$(cat "$W/f3b")" = "content 3"
expect_exit 0 "$FTX" mv w/f3b w/full
check "mv into an existing folder" test ! -e "$W/f3b" -a "$(cat "$W/full/f3b" 2>/dev/null)" = "content 3"
grep -qx 'moved w/f3b -> w/full/f3b' "$T/out" && ok || bad "mv output: $(cat "$T/out")"
expect_exit 0 "$FTX" put "$T/f1" w/from
expect_exit 0 "$FTX" put "$T/f2" w/target
expect_exit 0 "$FTX" mv w/from w/target
check "mv replaced the file" test ! -e "$W/from" -a "$(cat "$W/target")" = "content 1"
expect_exit 4 "$FTX" mv w/nope w/other

expect_exit 0 "$FTX" mkdir deep/a/b/c
check "mkdir made the parents" test -d "$T/root1/deep/a/b/c"
expect_exit 0 "$FTX" mkdir deep/a/b/c
expect_exit 0 "$FTX" mkdir deep/a
expect_exit 5 "$FTX" mkdir w/target
check "mkdir over a file left the file" test -f "$W/target" -a "$(cat "$W/target")" = "content 1"

# A read-only server (the flag from the environment, FTX_READ_ONLY): every change refused.
R=$T/root3
mkdir -p "$R/d" "$R/empty"
echo keep >"$R/keep.txt"
echo inner >"$R/d/inner.txt"
FTX_READ_ONLY=1 start_server "$T/serve3.log" --root "$R"
S3=$SERVER
snapshot "$R" >"$T/ro.before"
expect_exit 5 "$FTX" put "$T/f1" new.txt -s "$S3"
expect_exit 5 "$FTX" put "$T/f1" keep.txt -s "$S3"
expect_exit 5 "$FTX" put -r "$T/tree/photos" -s "$S3"
# A tree of files alone (no empty folder to make first): the batch ends at the first refusal,
# said once -- not once per file.
make_tree "$T/ro-tree" 2 100 512
expect_exit 5 "$FTX" put -r "$T/ro-tree" -s "$S3"
check "put -r to a read-only server: one line, saying so" \
  grep -qx 'ftx: 127\.0\.0\.1:[0-9]*: server is read-only; uploads are refused' "$T/err"
check "put -r to a read-only server: nothing else said" test "$(wc -l <"$T/err")" = 1
expect_exit 5 "$FTX" put -r "$T/ro-tree" -s "$S3" --json
jcheck "$T/out" 'len(L) == 1 and L[0]["exit_code"] == 5 and not L[0]["ok"]'
expect_exit 5 "$FTX" rm keep.txt -s "$S3"
expect_exit 5 "$FTX" rm empty -s "$S3"
expect_exit 5 "$FTX" mv keep.txt moved.txt -s "$S3"
expect_exit 5 "$FTX" mv d/inner.txt empty -s "$S3"
expect_exit 5 "$FTX" mkdir newdir -s "$S3"
snapshot "$R" >"$T/ro.after"
check "read-only server: nothing changed" diff "$T/ro.before" "$T/ro.after"
expect_exit 0 "$FTX" get keep.txt "$T/ro-keep.txt" -s "$S3"
check "read-only server still serves downloads" test "$(cat "$T/ro-keep.txt")" = keep

# =================================================================== 2. one failing file in a batch
M=$T/mixed
mkdir -p "$M/sub"
echo a1 >"$M/a1.txt"
echo a2 >"$M/a2.txt"
head -c 2097152 /dev/urandom >"$M/m-big.bin"  # sorts between the small files
echo z1 >"$M/z1.txt"
echo z2 >"$M/sub/z2.txt"
start_server "$T/serve2.log" --root "$T/root2" --max-file-size 1M --log-format json
S2=$SERVER
small="mixed/a1.txt mixed/a2.txt mixed/sub/z2.txt mixed/z1.txt"
expect_exit 5 "$FTX" put -r "$M" -s "$S2"
check "the failing file is named on stderr" grep -q 'm-big\.bin' "$T/err"
check "the failing file's line: its name, then the server's reason" \
  grep -qx 'ftx: put "mixed/m-big\.bin": refused: "mixed/m-big\.bin" is 2097152 bytes; this server takes at most 1048576' "$T/err"
expect_exit 0 "$FTX" ls mixed -s "$S2"
check "the small files were stored despite the big one" \
  test "$(sed -E 's/.*  //' "$T/out" | tr '\n' ' ')" = "$small "
for f in a1.txt a2.txt z1.txt sub/z2.txt; do
  check "mixed/$f stored intact" cmp -s "$M/$f" "$T/root2/mixed/$f"
done
check "the big file was not stored" test ! -e "$T/root2/mixed/m-big.bin"
# The same with the refused file first and last in the batch.
mkdir -p "$T/edges"
cp "$M/m-big.bin" "$T/edges/0-big.bin"
cp "$M/m-big.bin" "$T/edges/z-big.bin"
echo b >"$T/edges/b.txt"
echo c >"$T/edges/c.txt"
expect_exit 5 "$FTX" put -r "$T/edges" -s "$S2"
check "refused first and last: both named" grep -q '0-big\.bin' "$T/err"
check "refused first and last: both named" grep -q 'z-big\.bin' "$T/err"
check "refused first and last: the others stored" cmp -s "$T/edges/b.txt" "$T/root2/edges/b.txt"
check "refused first and last: the others stored" cmp -s "$T/edges/c.txt" "$T/root2/edges/c.txt"

expect_exit 5 "$FTX" put -r "$M" mixedj --json -s "$S2"
jexpect "put -r --json: one object per file, then a summary" "$T/out" "
  len(L) == 6 and [o.get('summary') for o in L] == [None] * 5 + [True]
  and sorted(o['remote'] for o in L[:5]) == ['mixedj/a1.txt', 'mixedj/a2.txt', 'mixedj/m-big.bin',
                                            'mixedj/sub/z2.txt', 'mixedj/z1.txt']
  and N['mixedj/m-big.bin']['ok'] is False and N['mixedj/m-big.bin']['exit_code'] == 5
  and N['mixedj/m-big.bin']['error'].startswith('refused: ')
  and all(o['ok'] is True for o in L[:5] if o['remote'] != 'mixedj/m-big.bin')
  and L[5]['ok'] is False and L[5]['failed'] == 1 and L[5]['files'] == 4"
expect_exit 0 "$FTX" ls mixedj -s "$S2"
check "--json: the small files were stored" test "$(grep -c '' "$T/out")" = 4

# =================================================================== 6. --json everywhere
expect_exit 0 "$FTX" ls --json photos
jexpect "ls --json" "$T/out" "[o['name'] for o in L] == sorted('''$(cd "$T/tree" && find photos -type f | LC_ALL=C sort)'''.split('\n'))
  and N['photos/sub/run.sh']['executable'] is True and N['photos/sub/big.bin']['size'] == 3000000
  and N['photos/sub/deeper/old.txt']['mtime_ns'] == $(date -d '2001-02-03 04:05:06 UTC' +%s)000000000"
expect_exit 0 "$FTX" ls -l --json photos/sub/big.bin
jexpect "ls -l --json has sha256" "$T/out" "len(L) == 1 and L[0]['sha256'] == '$big_sha'"
expect_exit 0 "$FTX" put --json "$P/sub/big.bin" j/big.bin
jexpect "put --json" "$T/out" "len(L) == 1 and L[0]['ok'] is True and L[0]['op'] == 'put'
  and L[0]['remote'] == 'j/big.bin' and L[0]['bytes'] == 3000000 and L[0]['sha256'] == '$big_sha'"
expect_exit 0 "$FTX" get --json j/big.bin "$T/j-big.bin"
jexpect "get --json" "$T/out" "len(L) == 1 and L[0]['ok'] is True and L[0]['op'] == 'get'
  and L[0]['bytes'] == 3000000 and L[0]['sha256'] == '$big_sha'"
check "get --json wrote the file" cmp -s "$P/sub/big.bin" "$T/j-big.bin"
expect_exit 0 "$FTX" mkdir --json j/d1
jexpect "mkdir --json" "$T/out" "L == [{'op': 'mkdir', 'name': 'j/d1', 'ok': True}]"
expect_exit 0 "$FTX" mv --json j/big.bin j/d1
jexpect "mv --json" "$T/out" "len(L) == 1 and L[0]['ok'] is True and L[0]['op'] == 'mv'
  and L[0]['from'] == 'j/big.bin' and L[0]['to'] == 'j/d1/big.bin'"
expect_exit 4 "$FTX" rm --json j/d1/big.bin j/nope
jexpect "rm --json: one object per name" "$T/out" "len(L) == 2 and N['j/d1/big.bin']['ok'] is True
  and N['j/nope']['ok'] is False and N['j/nope']['exit_code'] == 4"
expect_exit 0 "$FTX" ping --json
jexpect "ping --json" "$T/out" "len(L) == 1 and L[0]['ok'] is True and L[0]['op'] == 'ping'"
echo precious >"$T/keep.txt"
expect_exit 4 "$FTX" get --json no-such-file "$T/keep.txt"
jexpect "get --json of a missing file" "$T/out" "len(L) == 1 and L[0]['ok'] is False and L[0]['exit_code'] == 4"
check "failed get left the local file alone" test "$(cat "$T/keep.txt")" = precious

# =================================================================== 7. FTX_* environment
expect_exit 0 env -u FTX_SERVER "$FTX" ls -s "$S1"
cp "$T/out" "$T/ls-s.out"
expect_exit 0 env FTX_SERVER="$S1" "$FTX" ls
check "FTX_SERVER replaces -s" cmp -s "$T/ls-s.out" "$T/out"
expect_exit 0 env FTX_JSON=1 "$FTX" ls photos
jexpect "FTX_JSON=1 ftx ls" "$T/out" "len(L) == 6 and all('mtime_ns' in o for o in L)"
# (FTX_READ_ONLY=1 ftx serve: the read-only server above.)
expect_exit 0 "$FTX" put --help
check "put --help mentions FTX_SERVER" grep -q 'FTX_SERVER' "$T/out"
check "put --help shows Examples" grep -q '^Examples:' "$T/out"

# =================================================================== 8. no progress bar off a terminal
expect_exit 0 "$FTX" put "$P/sub/big.bin" bar/big.bin
check "put to a file: nothing on stderr" test ! -s "$T/err"
expect_exit 0 "$FTX" get bar/big.bin "$T/bar-big.bin"
check "get to a file: nothing on stderr" test ! -s "$T/err"
expect_exit 0 "$FTX" get -r photos/sub "$T/bar-sub"
check "get -r to a file: nothing on stderr" test ! -s "$T/err"
check "no carriage return on stdout" test "$(tr -cd '\r' <"$T/out" | wc -c)" = 0
if command -v script >/dev/null; then
  # stderr a terminal but stdout a file: still no bar.
  script -qec "$(printf '%q ' "$FTX" put "$P/sub/big.bin" bar/tty.bin) >$(printf '%q' "$T/tty-stdout")" /dev/null \
    </dev/null >"$T/tty.log" 2>&1 && ok || bad "put under script failed: $(cat "$T/tty.log")"
  check "stdout redirected: no bar even on a terminal" test ! -s "$T/tty.log"
  script -qec "$(printf '%q ' "$FTX" put "$P/sub/big.bin" bar/tty.bin)" /dev/null </dev/null >"$T/tty.log" 2>&1 &&
    ok || bad "put under script failed: $(cat "$T/tty.log")"
  check "on a terminal the bar is drawn" grep -q $'\r\\[#*\\.*\\] *[0-9]*%' "$T/tty.log"
  script -qec "$(printf '%q ' "$FTX" put -q "$P/sub/big.bin" bar/tty.bin)" /dev/null </dev/null >"$T/tty.log" 2>&1 &&
    ok || bad "put -q under script failed: $(cat "$T/tty.log")"
  check "put -q: no bar on a terminal" test "$(tr -cd '\r' <"$T/tty.log" | wc -c)" = "$(grep -c '' "$T/tty.log")"
fi

# =================================================================== 9. server log lines
grep -qE '^[^ ]+ info 127\.0\.0\.1:[0-9]+ put "photos/sub/big\.bin" bytes=3000000 ms=[0-9.]+ result=ok$' "$T/serve1.log" &&
  ok || bad "text log: no put line for photos/sub/big.bin"
grep -qE ' put "j/big\.bin" bytes=3000000 .*result=ok$' "$T/serve1.log" && ok || bad "text log: no put line for j/big.bin"
echo "logged line" >"$T/logged.txt"
expect_exit 0 "$FTX" put "$T/logged.txt" logged.txt -s "$S2"
# (the server may still be writing its line when the reply arrived: wait for it, bounded)
for _ in $(seq 2000); do if grep -q '"logged.txt"' "$T/serve2.log"; then break; fi; done
jexpect "--log-format json: JSON lines with the put" "$T/serve2.log" "any(o.get('op') == 'put'
  and o.get('result') == 'ok' and o.get('name') == 'logged.txt' and o.get('bytes') == 12 for o in L)"

# =================================================================== 10. a server stopped mid-folder
# put -r of 20,000 files; SIGTERM once the server has logged its first stored file. The
# client exits 3 with the server's reason, then says how many files got through, and that
# many are on the server, whole.
start_server "$T/serve3.log" --root "$T/root3" --min-free 0
S3_PID=$SERVER_PID
make_tree "$T/many" 20 1000 512
cut_rc=0
"$FTX" put -r -q "$T/many" cut -s "$SERVER" >"$T/cut.out" 2>"$T/cut.err" &
CUT_PID=$!
deadline=$((${EPOCHREALTIME/./} + 30000000))
until grep -q ' put "cut/.*result=ok' "$T/serve3.log"; do
  kill -0 "$CUT_PID" 2>/dev/null || die "put -r ended before the server logged a stored file: $(cat "$T/cut.err")"
  [ "${EPOCHREALTIME/./}" -lt "$deadline" ] || die "no stored file logged after 30 s: $(cat "$T/serve3.log")"
done
kill -TERM "$S3_PID"
wait "$CUT_PID" || cut_rc=$?
rc=0
wait "$S3_PID" || rc=$?
for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" != "$S3_PID" ] || unset "PIDS[$i]"; done
[ "$rc" = 0 ] && ok || bad "server exited $rc after SIGTERM mid-folder"
[ "$cut_rc" = 3 ] && ok || bad "put -r cut by a stop exited $cut_rc (want 3): $(cat "$T/cut.err")"
grep -qx 'ftx: 127\.0\.0\.1:[0-9]*: server is shutting down; closing the connection' "$T/cut.err" &&
  ok || bad "put -r cut by a stop: no reason from the server: $(cat "$T/cut.err")"
stored=$(sed -nE 's/^ftx: before that, ([0-9]+) of 20000 files were stored under cut; the other ([0-9]+) are not confirmed$/\1 \2/p' "$T/cut.err")
if [ -z "$stored" ]; then
  bad "put -r cut by a stop: no count of what got through: $(cat "$T/cut.err")"
else
  read -r n rest <<<"$stored"
  check "put -r cut by a stop: the counts add up ($n + $rest)" test $((n + rest)) = 20000
  check "put -r cut by a stop: some but not all files went ($n)" test "$n" -gt 0 -a "$n" -lt 20000
  check "put -r cut by a stop: the $n files said stored are on the server" \
    test "$(find "$T/root3/cut" -type f | wc -l)" = "$n"
  (cd "$T/root3/cut" && find . -type f -print0 | xargs -0 -r sha256sum) >"$T/cut.sums"
  check "put -r cut by a stop: every stored file is whole" in_dir "$T/many" sha256sum --quiet -c "$T/cut.sums"
fi

# =================================================================== 11. a folder without the token
# put -r to a server that wants a token, without one: the server refuses the first file and
# closes. One line with the reason and exit 9, as a single put says it -- not the first
# file refused, then "connection lost" and exit 3.
printf 'correct horse battery staple\n' >"$T/token"
chmod 600 "$T/token"
start_server "$T/serve4.log" --root "$T/root4" --min-free 0 --token-file "$T/token"
make_tree "$T/few" 3 100 2048
expect_exit 9 "$FTX" put -r "$T/few" few -s "$SERVER"
check "put -r without the token: one line, about the token" \
  grep -qx 'ftx: 127\.0\.0\.1:[0-9]*: authentication failed: this server needs the right token .*' "$T/err"
check "put -r without the token: nothing else said" test "$(wc -l <"$T/err")" = 1
check "put -r without the token: nothing stored" test ! -e "$T/root4/few"
expect_exit 9 "$FTX" put -r "$T/few" few -s "$SERVER" --json
jcheck "$T/out" 'len(L) == 1 and L[0]["exit_code"] == 9 and not L[0]["ok"]'
FTX_TOKEN_FILE="$T/token" expect_exit 0 "$FTX" put -r -q "$T/few" few -s "$SERVER"
check "put -r with the token: every file stored" test "$(find "$T/root4/few" -type f | wc -l)" = 300

# =================================================================== 12. --skip-identical
# A second run moves only what changed: a file is left alone when the other side has the same
# size, mtime, executable bit and SHA-256. Changed bytes under the same size and mtime are
# caught by the hash; the server's log shows what travelled.
start_server "$T/serve5.log" --root "$T/root5" --min-free 0
make_tree "$T/same" 3 20 1000
expect_exit 0 "$FTX" put -r -q "$T/same" same -s "$SERVER"
# flip_byte FILE: one byte changed, size and mtime kept.
flip_byte() {
  touch -r "$1" "$T/mtime.ref"
  python3 -c 'import sys; f = open(sys.argv[1], "r+b"); b = f.read(11)[10]; f.seek(10); f.write(bytes([b ^ 1]))' "$1"
  touch -r "$T/mtime.ref" "$1"
}
flip_byte "$T/same/d00/f0003"
touch -d '2021-01-01 00:00:00' "$T/same/d01/f0000"
puts_before=$(grep -c ' put "same/' "$T/serve5.log")
expect_exit 0 "$FTX" put -r --skip-identical "$T/same" same -s "$SERVER"
grep -qE '^stored 2 of 2 files \(.*\) under same in [0-9.]+ s, 58 identical \(not sent\)$' "$T/out" && ok ||
  bad "put -r --skip-identical summary: $(cat "$T/out")"
check "put -r --skip-identical sent the two changed files alone" \
  test "$(($(grep -c ' put "same/' "$T/serve5.log") - puts_before))" = 2
check "the changed bytes reached the server" cmp "$T/same/d00/f0003" "$T/root5/same/d00/f0003"
check "the new mtime reached the server" \
  test "$(stat -c %Y "$T/root5/same/d01/f0000")" = "$(stat -c %Y "$T/same/d01/f0000")"
expect_exit 0 "$FTX" put -r --skip-identical --json "$T/same" same -s "$SERVER"
jcheck "$T/out" 'len(L) == 61 and all(o["ok"] and o["identical"] for o in L[:-1]) and L[-1]["identical"] == 60 and L[-1]["files"] == 0'
expect_exit 0 "$FTX" put -r -q --skip-identical "$T/same" elsewhere -s "$SERVER"
grep -qE '^stored 60 of 60 files .* in [0-9.]+ s$' "$T/out" && ok || bad "put -r --skip-identical to a new folder: $(cat "$T/out")"
expect_exit 0 "$FTX" put --skip-identical "$T/same/d02/f0001" same/d02/f0001 -s "$SERVER"
check "put --skip-identical of one file says it was not sent" \
  grep -qE '^identical same/d02/f0001 \(1000 B, sha256 [0-9a-f]{64}\): not sent$' "$T/out"
expect_exit 0 "$FTX" put "$T/same/d02/f0001" same/d02/f0001 -s "$SERVER"
check "without --skip-identical the file is sent as ever" grep -q '^stored same/d02/f0001 ' "$T/out"
# Downloads alike, compared with the local copy.
expect_exit 0 "$FTX" get -r -q same "$T/back" -s "$SERVER"
flip_byte "$T/back/d02/f0005"
chmod 0654 "$T/back/d02/f0006"  # a download clears every execute bit of a file that has none
gets_before=$(grep -c ' get "same/' "$T/serve5.log")
expect_exit 0 "$FTX" get -r --skip-identical same "$T/back" -s "$SERVER"
grep -qE '^saved 2 of 2 files \(.*\) into .*/back in [0-9.]+ s, 58 identical \(not fetched\)$' "$T/out" && ok ||
  bad "get -r --skip-identical summary: $(cat "$T/out")"
check "get -r --skip-identical fetched the two changed files alone" \
  test "$(($(grep -c ' get "same/' "$T/serve5.log") - gets_before))" = 2
check "get -r --skip-identical: the copy is whole again" diff -r "$T/same" "$T/back"
check "get -r --skip-identical: the mode is what a download gives" test "$(stat -c %a "$T/back/d02/f0006")" = 644
expect_exit 0 "$FTX" get --skip-identical same/d00/f0000 "$T/back/d00" -s "$SERVER" --json
jcheck "$T/out" 'len(L) == 1 and L[0]["identical"] and L[0]["ok"] and L[0]["bytes"] == 1000'
# The check reads and hashes while the connection waits: a server that drops a connection left
# waiting (--idle-timeout 0.1 s) must not fail the files to send after it (a PING finds the
# connection gone, and a new one is opened). 256 MiB (sparse, on both sides: the server hashes
# its copy for its STAT) take far longer than that to read and hash here (about a second).
mkdir -p "$T/slow/src"
truncate -s 256M "$T/slow/src/big"
echo small >"$T/slow/src/small"
# after_long_check ROOT LOG [SERVE AND CLIENT OPTION...]: a server on ROOT holding the big file
# (same size and mtime) drops the waiting connection; the small file must still arrive.
after_long_check() {
  local root=$1 log=$2
  shift 2
  mkdir -p "$root/slow"
  truncate -s 256M "$root/slow/big"
  touch -r "$T/slow/src/big" "$root/slow/big"
  start_server "$log" --root "$root" --min-free 0 --idle-timeout 0.1 "$@"
  expect_exit 0 "$FTX" put -r --skip-identical "$@" "$T/slow/src" slow -s "$SERVER"
  grep -qE '^stored 1 of 1 files \(6 B\) under slow in [0-9.]+ s, 1 identical \(not sent\)$' "$T/out" && ok ||
    bad "put -r --skip-identical $* after a long check: $(cat "$T/out")"
  check "the file sent after the long check $* arrived" cmp "$T/slow/src/small" "$root/slow/small"
}
mkdir -p "$T/root6/slow"
echo "on the server only" >"$T/root6/slow/only-here"
after_long_check "$T/root6" "$T/serve6.log"
# The server is asked for the SHA-256 of a file whose size, mtime and mode match alone: it
# hashed (and recorded, as an extended attribute) the big file, not the one it alone has.
has_digest_record() { python3 -c 'import os, sys; os.getxattr(sys.argv[1], "user.ftx.sha256")' "$1" 2>/dev/null; }
check "the server hashed the file that may be identical" has_digest_record "$T/root6/slow/big"
check "the server did not hash a file with no local counterpart" not has_digest_record "$T/root6/slow/only-here"
# The same over TLS, where the server's close of the waiting connection comes without a TLS
# close_notify.
after_long_check "$T/root7" "$T/serve7.log" --tls

# ---- the main server stops cleanly on SIGTERM
kill -TERM "$S1_PID"
rc=0
wait "$S1_PID" || rc=$?
for i in "${!PIDS[@]}"; do [ "${PIDS[$i]}" != "$S1_PID" ] || unset "PIDS[$i]"; done
[ "$rc" = 0 ] && ok || bad "server exited $rc after SIGTERM"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
