#!/usr/bin/env bash
# Many small files over loopback: FILES files of SIZE bytes (default 10,000 x 4 KiB = 41 MB,
# random content, 100 files a folder) moved between a client and a server on 127.0.0.1 by
#   ftx     `ftx put -r` up and `ftx get -r` down, against `ftx serve`
#   ftx-P2  the same with `-P 2`: the files spread over two connections (same server)
#   rsync   `rsync -a` up and down, against an rsync daemon (no -c, no -z: as people use it)
#   tar|nc  `tar -c | nc` into `nc -l | tar -x`, one direction ("stream"): the ceiling
#   ftx-same / rsync-same  the same trees again, nothing changed, into copies that hold every
#           file already: `ftx put -r` / `get -r --skip-identical` against `rsync -a` (whose
#           quick check looks at size and mtime; ftx also reads and hashes each file)
# For each tool and direction: the median wall time of RUNS runs, files/s, MB/s, the ratio to
# ftx (ftx time / this time, so above 1 is faster than ftx; the stream is compared with ftx
# up, rsync-same with ftx-same), the median of that ratio taken within each round ("paired") and the CPU seconds of
# client + server. The runs go in rounds, one of each tool and direction per round, so that
# a machine whose speed drifts during the script moves all tools alike. Every root and local
# folder is on /dev/shm, so the disk is not what is measured -- or under BASE: BASE=/var/tmp
# puts them on the disk, where each tool's way of making files durable (ftx: one syncfs per
# burst of up to 64 files, on both sides; rsync: none) is part of the price. Each run starts
# from an empty destination (the -same rows: from a full one) and its copy is checked against
# the source (SHA-256 of every file); a failed or wrong run marks its row "failed" and the benchmark goes on. A
# benchmark, not a test: it asserts nothing.
#
# Usage: bench/small_files.sh [FILES (10000) [SIZE (4096) [RUNS (3)]]]
#   the same as environment variables FILES, SIZE, RUNS; SMOKE=1 means FILES=200 RUNS=1 (seconds)
#   STRICT=1: exit 1 when any row failed (CI runs SMOKE=1 STRICT=1)
#   FTX=path/to/ftx (default build/apps/ftx/ftx, else build/ftx), TOOLS="ftx ftxp rsync tarnc same",
#   RUN_TIMEOUT=seconds a single run may take (300), BASE=folder for roots and copies (/dev/shm)
# rsync and netcat-openbsd are installed with apt-get when missing.
set -euo pipefail

if [ "${SMOKE:-0}" = 1 ]; then FILES=${FILES:-200} RUNS=${RUNS:-1}; fi
FILES=${1:-${FILES:-10000}}
SIZE=${2:-${SIZE:-4096}}
RUNS=${3:-${RUNS:-3}}
TOOLS=${TOOLS:-ftx ftxp rsync tarnc same}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
PER_DIR=100
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
FTX=$(ftx_binary "$REPO")

BASE=${BASE:-/dev/shm}
W=$(mktemp -d "$BASE"/ftx-bench.XXXX)
FSTYPE=$(stat -f -c %T "$BASE")
# On a disk every run starts with nothing dirty: what the last run (or the rm before this
# one) left in the page cache is written out first, so no tool pays for another's writes.
quiesce() { [ "$FSTYPE" = tmpfs ] || sync -f "$W"; }
PIDS=()     # the servers this script started; killed at exit
CLIENT=     # the client run in flight, if any
RECV=       # the tar|nc receiver in flight, if any
cleanup() {
  local p
  for p in $CLIENT $RECV "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in $CLIENT $RECV "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export XDG_CONFIG_HOME=$W/config

# ---------------------------------------------------------------- tools

NC= NC_LISTEN=() NC_SEND=()
find_nc() {  # sets NC, NC_LISTEN (before the port) and NC_SEND (close the socket at EOF)
  local c help
  for c in nc.openbsd nc; do
    command -v "$c" >/dev/null || continue
    help=$("$c" -h 2>&1 || true)
    if grep -q OpenBSD <<<"$help"; then NC=$c NC_LISTEN=(-l 127.0.0.1) NC_SEND=(-N); return; fi
    if grep -q -- '-q secs' <<<"$help"; then NC=$c NC_LISTEN=(-l -s 127.0.0.1 -p) NC_SEND=(-q 0); return; fi
  done
  return 1
}

ensure_tools() {
  local missing=()
  [[ " $TOOLS " != *" rsync "* && " $TOOLS " != *" same "* ]] || command -v rsync >/dev/null || missing+=(rsync)
  [[ " $TOOLS " != *" tarnc "* ]] || find_nc || missing+=(netcat-openbsd)
  if [ ${#missing[@]} -gt 0 ]; then install_packages "${missing[@]}" || say "could not install ${missing[*]}"; fi
  [[ " $TOOLS " != *" tarnc "* ]] || [ -n "$NC" ] || find_nc || true
}

# ---------------------------------------------------------------- helpers

children_done() {  # children_done PID: wait (up to 3 s) until a server has reaped its children
  local _
  for _ in $(seq 60); do
    [ -z "$(cat /proc/"$1"/task/*/children 2>/dev/null | tr -d ' ')" ] && return
    sleep 0.05
  done
}

TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -o "$W/time.out" -f '%U %S')
time_file_cpu() {  # time_file_cpu FILE: user+sys seconds from a /usr/bin/time -f '%U %S' file, or nothing
  [ ${#TIME[@]} -gt 0 ] && [ -s "$1" ] && tail -n 1 "$1" | awk 'NF == 2 { print $1 + $2 }' || true
}

# run_client ERRFILE CMD...: runs CMD (with a time limit) and sets SECS and CPU (client
# user+sys seconds, empty without /usr/bin/time); returns CMD's status
run_client() {
  local err=$1 t0 t1 rc=0; shift
  rm -f "$W/time.out"
  t0=$(date +%s%N)
  timeout "$RUN_TIMEOUT" "${TIME[@]}" "$@" >/dev/null 2>"$err" &
  CLIENT=$!
  wait "$CLIENT" || rc=$?
  t1=$(date +%s%N)
  CLIENT=
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  CPU=$(time_file_cpu "$W/time.out")
  return $rc
}

manifest() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }
verify() {  # verify DIR NAME: DIR, or DIR/NAME (for "copy into" semantics), holds exactly the source
  local d
  for d in "$1" "$1/$2"; do
    [ -d "$d" ] && manifest "$d" >"$W/copy.sha256" && cmp -s "$W/copy.sha256" "$W/src.sha256" && return 0
  done
  return 1
}

declare -A T C FAIL  # per "tool dir": run times, run CPU seconds, reason of failure
fail() {  # fail TOOL DIR REASON
  FAIL[$1 $2]=$3
  say "$1 $2: failed: $3"
}

# one_run TOOL DIR RUN SERVER_PID CHECK_DIR ALT_NAME CMD...: one timed client run against a
# running server, then the copy in CHECK_DIR is verified; records the time and the CPU seconds
one_run() {
  local tool=$1 dir=$2 run=$3 server=$4 check=$5 alt=$6 c0 c1 rc=0; shift 6
  quiesce
  c0=$(cpu_ticks "$server")
  run_client "$W/$tool-$dir.err" "$@" || rc=$?
  children_done "$server"
  c1=$(cpu_ticks "$server")
  if [ $rc != 0 ]; then fail "$tool" "$dir" "exit $rc: $(last_line "$W/$tool-$dir.err")"; return 1; fi
  verify "$check" "$alt" || { fail "$tool" "$dir" "the copy differs from the source"; return 1; }
  T[$tool $dir]+="$SECS "
  [ -z "$CPU" ] || C[$tool $dir]+="$(awk -v a="$CPU" -v b="$c0" -v c="$c1" -v t="$TICK" 'BEGIN { print a + (c - b) / t }') "
  say "$tool $dir run $run/$RUNS: $SECS s"
}

seed() { rm -rf "$1" && cp -a "$W/src" "$1"; }  # seed DIR: a copy of the source, for the downloads

# ---------------------------------------------------------------- the tools

# Each tool's server starts once; then the runs go in rounds, one run of every tool and
# direction per round (ftx up, ftx down, ftx-P2 up and down, rsync up, rsync down, tar|nc,
# each round starting one tool further on), so that a machine that speeds up or slows down
# during the script (shared VMs do, by a fifth within an hour) moves every tool's times
# alike instead of whichever tool's block of runs it fell on. A row that failed once is not run again.
FTX_STARTED= FTX_PID= FTX_PORT= RSYNC_STARTED= RSYNC_PID= RSYNC_PORT=
failed_row() { [ -n "${FAIL[$1 $2]:-}" ]; }

start_ftx() {  # once, for ftx and ftx-P2
  local root=$W/ftx-root r _
  [ -z "$FTX_STARTED" ] || return 0
  FTX_STARTED=1
  if [ ! -x "$FTX" ]; then fail ftx up "no ftx binary at $FTX"; fail ftx down "no ftx binary at $FTX"; return; fi
  mkdir -p "$root"
  "$FTX" serve --root "$root" --listen 127.0.0.1:0 --min-free 0 >/dev/null 2>"$W/ftx-serve.log" &
  FTX_PID=$!; PIDS+=("$FTX_PID")
  for _ in $(seq 100); do
    FTX_PORT=$(sed -nE 's/.*serving .* on 127\.0\.0\.1:([0-9]+).*/\1/p' "$W/ftx-serve.log" | head -n 1)
    [ -n "$FTX_PORT" ] || ! kill -0 "$FTX_PID" 2>/dev/null && break
    sleep 0.05
  done
  if [ -z "$FTX_PORT" ]; then
    r="server did not start: $(last_line "$W/ftx-serve.log")"
    fail ftx up "$r"; fail ftx down "$r"; return
  fi
  seed "$root/set"
}

# ftx_rows ROW RUN UPNAME [OPTION...]: one `put -r` (into UPNAME) and one `get -r`, with
# OPTIONs, against ftx's server, recorded as ROW up and ROW down.
ftx_rows() {
  local row=$1 run=$2 up=$3 root=$W/ftx-root
  shift 3
  if ! failed_row "$row" up; then
    rm -rf "${root:?}/$up"
    one_run "$row" up "$run" "$FTX_PID" "$root/$up" src \
      "$FTX" put -r -q "$@" "$W/src" "$up" -s "127.0.0.1:$FTX_PORT" || true
  fi
  if ! failed_row "$row" down; then
    rm -rf "$W/down"
    one_run "$row" down "$run" "$FTX_PID" "$W/down" set \
      "$FTX" get -r -q "$@" set "$W/down" -s "127.0.0.1:$FTX_PORT" || true
  fi
}

ftx_round() { ftx_rows ftx "$1" up; }  # ftx_round RUN

# ftx-P2 uses ftx's server, whichever of the two starts it.
start_ftxp() {
  start_ftx
  if [ -z "$FTX_PORT" ]; then fail ftx-P2 up "no ftx server"; fail ftx-P2 down "no ftx server"; fi
}

ftxp_round() { ftx_rows ftx-P2 "$1" upp -P 2; }  # ftxp_round RUN

start_rsync() {  # once, for rsync and rsync-same
  local root=$W/rsync-root conf=$W/rsyncd.conf r _
  [ -z "$RSYNC_STARTED" ] || return 0
  RSYNC_STARTED=1
  if ! command -v rsync >/dev/null; then fail rsync up "rsync is not installed"; fail rsync down "rsync is not installed"; return; fi
  mkdir -p "$root"
  {
    echo "use chroot = no"
    echo "log file = $W/rsyncd.log"
    echo "[mod]"
    echo "  path = $root"
    echo "  read only = no"
    echo "  use chroot = no"
    echo "  numeric ids = yes"
    # as root the daemon would switch to "nobody", who cannot write into the 0700 bench folder
    if [ "$(id -u)" = 0 ]; then echo "  uid = 0"; echo "  gid = 0"; fi
  } >"$conf"
  for _ in 1 2 3 4 5; do  # a free port may be taken before the daemon binds it: try another
    RSYNC_PORT=$(free_port)
    rsync --daemon --no-detach --config="$conf" --port="$RSYNC_PORT" --address=127.0.0.1 >/dev/null 2>"$W/rsyncd.err" &
    RSYNC_PID=$!
    wait_listening "$RSYNC_PORT" "$RSYNC_PID" && break
    kill "$RSYNC_PID" 2>/dev/null || true; wait "$RSYNC_PID" 2>/dev/null || true; RSYNC_PID=
  done
  if [ -z "$RSYNC_PID" ]; then
    r="daemon did not start: $(last_line "$W/rsyncd.err")"
    fail rsync up "$r"; fail rsync down "$r"; return
  fi
  PIDS+=("$RSYNC_PID")
  seed "$root/set"
}

rsync_round() {  # rsync_round RUN
  local root=$W/rsync-root url=rsync://127.0.0.1:$RSYNC_PORT/mod
  if ! failed_row rsync up; then
    rm -rf "$root/up"
    one_run rsync up "$1" "$RSYNC_PID" "$root/up" src rsync -a "$W/src/" "$url/up/" || true
  fi
  if ! failed_row rsync down; then
    rm -rf "$W/down"
    one_run rsync down "$1" "$RSYNC_PID" "$W/down" set rsync -a "$url/set/" "$W/down/" || true
  fi
}

# ---- the same trees again, nothing changed ("same"): each destination is filled once,
# untimed, by the tool itself; then every run finds every file there already.
start_same() {
  local url
  start_ftx
  if [ -z "$FTX_PORT" ]; then
    fail ftx-same up "no ftx server"; fail ftx-same down "no ftx server"
  elif ! "$FTX" put -r -q "$W/src" same -s "127.0.0.1:$FTX_PORT" >/dev/null 2>"$W/same.err" ||
    ! "$FTX" get -r -q set "$W/same-down" -s "127.0.0.1:$FTX_PORT" >/dev/null 2>>"$W/same.err"; then
    fail ftx-same up "filling the copies: $(last_line "$W/same.err")"; fail ftx-same down "filling the copies"
  fi
  start_rsync
  if [ -z "$RSYNC_PID" ]; then
    fail rsync-same up "no rsync daemon"; fail rsync-same down "no rsync daemon"; return
  fi
  url=rsync://127.0.0.1:$RSYNC_PORT/mod
  if ! rsync -a "$W/src/" "$url/same/" 2>"$W/same.err" || ! rsync -a "$url/set/" "$W/rsync-same-down/" 2>>"$W/same.err"; then
    fail rsync-same up "filling the copies: $(last_line "$W/same.err")"; fail rsync-same down "filling the copies"
  fi
}

same_round() {  # same_round RUN
  local url=rsync://127.0.0.1:$RSYNC_PORT/mod
  failed_row ftx-same up || one_run ftx-same up "$1" "$FTX_PID" "$W/ftx-root/same" src \
    "$FTX" put -r -q --skip-identical "$W/src" same -s "127.0.0.1:$FTX_PORT" || true
  failed_row ftx-same down || one_run ftx-same down "$1" "$FTX_PID" "$W/same-down" set \
    "$FTX" get -r -q --skip-identical set "$W/same-down" -s "127.0.0.1:$FTX_PORT" || true
  failed_row rsync-same up || one_run rsync-same up "$1" "$RSYNC_PID" "$W/rsync-root/same" src \
    rsync -a "$W/src/" "$url/same/" || true
  failed_row rsync-same down || one_run rsync-same down "$1" "$RSYNC_PID" "$W/rsync-same-down" set \
    rsync -a "$url/set/" "$W/rsync-same-down/" || true
}

start_tarnc() { [ -n "$NC" ] || fail tar\|nc stream "no usable nc (netcat-openbsd)"; }

tarnc_round() {  # tarnc_round RUN: the receiver is started afresh for every run and counts as the server
  local r=$1 port rc rcpu t0 rtime
  ! failed_row tar\|nc stream || return 0
  rm -rf "$W/stream"; mkdir "$W/stream"
  quiesce
  port=$(free_port)
  rm -f "$W/time.recv"
  rtime=(); [ ${#TIME[@]} = 0 ] || rtime=(/usr/bin/time -o "$W/time.recv" -f '%U %S')
  timeout "$RUN_TIMEOUT" "${rtime[@]}" \
    bash -c 'set -o pipefail; "$@" </dev/null | tar -x -C "$0"' "$W/stream" "$NC" "${NC_LISTEN[@]}" "$port" \
    >/dev/null 2>"$W/tarnc-recv.err" &
  RECV=$!
  if ! wait_listening "$port" "$RECV"; then
    fail tar\|nc stream "receiver did not listen: $(last_line "$W/tarnc-recv.err")"
    kill "$RECV" 2>/dev/null || true; wait "$RECV" 2>/dev/null || true; RECV=; return 0
  fi
  rc=0 t0=$(date +%s%N)
  run_client "$W/tarnc-send.err" bash -c 'set -o pipefail; tar -c -C "$0" . | "$@"' "$W/src" "$NC" "${NC_SEND[@]}" 127.0.0.1 "$port" || rc=$?
  wait "$RECV" || rc=$((rc ? rc : $?))
  RECV=
  # the time ends when the receiver has written the last file
  SECS=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  if [ $rc != 0 ]; then fail tar\|nc stream "exit $rc: $(last_line "$W/tarnc-send.err") / $(last_line "$W/tarnc-recv.err")"; return 0; fi
  verify "$W/stream" src || { fail tar\|nc stream "the copy differs from the source"; return 0; }
  T["tar|nc stream"]+="$SECS "
  rcpu=$(time_file_cpu "$W/time.recv")
  [ -z "$CPU" ] || [ -z "$rcpu" ] || C["tar|nc stream"]+="$(awk -v a="$CPU" -v b="$rcpu" 'BEGIN { print a + b }') "
  say "tar|nc stream run $r/$RUNS: $SECS s"
}

# ---------------------------------------------------------------- main

ensure_tools

say "making $FILES files of $SIZE bytes in $W/src"
mkdir "$W/src"
for ((i = 0; i * PER_DIR < FILES; i++)); do
  n=$((FILES - i * PER_DIR < PER_DIR ? FILES - i * PER_DIR : PER_DIR))
  d=$(printf '%s/src/d%04d' "$W" "$i")
  mkdir "$d"
  head -c $((n * SIZE)) /dev/urandom | split -b "$SIZE" -d -a 4 --additional-suffix=.bin - "$d/f"
done
manifest "$W/src" >"$W/src.sha256"

read -r -a TOOL_LIST <<<"$TOOLS"
for tool in "${TOOL_LIST[@]}"; do "start_$tool"; done
# Each round starts one tool further on, so that no tool always runs after the same one.
for ((r = 1; r <= RUNS; r++)); do
  for ((k = 0; k < ${#TOOL_LIST[@]}; k++)); do
    tool=${TOOL_LIST[(r - 1 + k) % ${#TOOL_LIST[@]}]}
    "${tool}_round" "$r"
  done
done

mb=$(awk -v f="$FILES" -v s="$SIZE" 'BEGIN { print f * s / 1e6 }')

# paired REF_TIMES TIMES: the median over rounds of REF's time / this time in the same round
# (robust to a machine whose speed drifts); nothing unless both have a time for every round.
paired() {
  local a=($1) b=($2) i out=""
  [ ${#a[@]} -gt 0 ] && [ ${#a[@]} = ${#b[@]} ] || return 0
  for ((i = 0; i < ${#a[@]}; i++)); do out+="$(awk -v x="${a[i]}" -v y="${b[i]}" 'BEGIN { print x / y }') "; done
  median <<<"$out"
}

echo
printf '%-10s %-7s %7s %9s %9s %8s %7s %7s %8s\n' tool dir files "median s" "files/s" "MB/s" ratio paired "CPU s"
for row in "ftx up" "ftx down" "ftx-P2 up" "ftx-P2 down" "rsync up" "rsync down" "tar|nc stream" \
  "ftx-same up" "ftx-same down" "rsync-same up" "rsync-same down"; do
  read -r tool dir <<<"$row"
  case $tool in
    tar\|nc) [[ " $TOOLS " == *" tarnc "* ]] || continue ;;
    ftx-P2) [[ " $TOOLS " == *" ftxp "* ]] || continue ;;
    *-same) [[ " $TOOLS " == *" same "* ]] || continue ;;
    *) [[ " $TOOLS " == *" $tool "* ]] || continue ;;
  esac
  if [ -n "${FAIL[$row]:-}" ]; then
    printf '%-10s %-7s %7s %9s %9s %8s %7s %7s %8s\n' "$tool" "$dir" "$FILES" failed - - - - -
    continue
  fi
  s=$(median <<<"${T[$row]:-}")
  cpu=$(median <<<"${C[$row]:-}")
  # The re-runs are compared with ftx's re-run, everything else with ftx's first copy.
  base=ftx; [[ $tool != *-same ]] || base=ftx-same
  ref=$(median <<<"${T[$base $([ "$dir" = down ] && echo down || echo up)]:-}")
  pr=$(paired "${T[$base $([ "$dir" = down ] && echo down || echo up)]:-}" "${T[$row]:-}")
  awk -v t="$tool" -v d="$dir" -v f="$FILES" -v s="$s" -v mb="$mb" -v ref="$ref" -v pr="$pr" -v cpu="$cpu" 'BEGIN {
    printf "%-10s %-7s %7s %9.3f %9.0f %8.1f %7s %7s %8s\n", t, d, f, s, f / s, mb / s,
      (ref == "" ? "-" : sprintf("%.2f", ref / s)), (pr == "" ? "-" : sprintf("%.2f", pr)),
      (cpu == "" ? "-" : sprintf("%.2f", cpu)) }'
done
echo "$FILES files of $SIZE B ($mb MB, $PER_DIR a folder), median of $RUNS run(s), 127.0.0.1, roots on $BASE ($FSTYPE), $(nproc) cores"
echo "ratio = ftx time / this time (above 1: faster than ftx; the stream against ftx up, the *-same re-runs against"
echo "ftx-same); paired = the median of that ratio taken within each round; CPU s = client + server user+sys"
for row in "${!FAIL[@]}"; do echo "failed: $row: ${FAIL[$row]}"; done | sort
# CI's smoke run (STRICT=1): a row that failed fails the run (times are never judged).
if [ "${STRICT:-0}" = 1 ] && [ -n "${!FAIL[*]}" ]; then exit 1; fi
