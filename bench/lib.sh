# Helpers shared by the benchmark scripts (sourced, not run): messages, package installs,
# free ports on 127.0.0.1, waiting for a listener, CPU ticks of a process, medians.
# shellcheck shell=bash

say() { echo "$*" >&2; }

# ftx_binary REPO: the ftx to measure, as an absolute path: $FTX if set, else
# REPO/build/apps/ftx/ftx, else REPO/build/ftx (where the CMake build puts it).
ftx_binary() {
  local f=${FTX:-}
  if [ -z "$f" ]; then
    f=$1/build/apps/ftx/ftx
    [ -x "$f" ] || [ ! -x "$1/build/ftx" ] || f=$1/build/ftx
  fi
  realpath -m "$f"
}

install_packages() {  # install_packages PKG...: apt-get, with an update only if the first try fails
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo -n)
  command -v apt-get >/dev/null || return 1
  say "installing $*"
  "${sudo[@]}" apt-get install -y -qq "$@" >&2 ||
    { "${sudo[@]}" apt-get update -qq >&2 && "${sudo[@]}" apt-get install -y -qq "$@" >&2; }
}

port_state() {  # port_state PORT: prints the TCP states (hex) of sockets bound to that local port
  local hex; printf -v hex '%04X' "$1"
  awk -v h="$hex" 'FNR > 1 { n = split($2, a, ":"); if (a[n] == h) print $4 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() { local p; while :; do p=$((20000 + RANDOM % 40000)); [ -n "$(port_state "$p")" ] || { echo "$p"; return; }; done; }
wait_listening() {  # wait_listening PORT PID: up to 5 s
  local _
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    port_state "$1" | grep -qx 0A && return 0
    sleep 0.05
  done
  return 1
}

# shellcheck disable=SC2034  # TICK is for the scripts that source this file
TICK=$(getconf CLK_TCK)
cpu_ticks() {  # cpu_ticks PID: user + system time of PID and of its reaped children, in ticks
  local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  awk '{ print $12 + $13 + $14 + $15 }' <<<"${stat##*) }"
}

# last_line FILE: the last line of a log or stderr file (not time's "Command exited" line)
last_line() { local l; l=$(grep -v '^Command exited' "$1" 2>/dev/null | tail -n 1); echo "${l:-no message}"; }
# median: of the numbers on stdin (separated by spaces or newlines); nothing for none
median() { tr ' ' '\n' | awk NF | sort -n | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
