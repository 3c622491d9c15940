#!/usr/bin/env bash
# An emulated long, lossy link between two network namespaces, for tests and benchmarks:
#
#   ${PREFIX}a: 10.77.0.1 dev ${PREFIX}0 <-> netsim (root namespace) <-> ${PREFIX}1 10.77.0.2 :${PREFIX}b
#
# netsim (tests/netsim/netsim.cpp, which says why TUN and not netem) creates the two TUN
# devices in the root namespace and keeps their descriptors; this file moves each device into
# its namespace, addresses it as a point-to-point link to the other side, and waits until a
# ping goes through. The devices are netsim's: they vanish when it exits.
#
# As a library (what scripts do):
#   source tests/netsim/link.sh
#   trap netsim_down EXIT          # or call netsim_down from the script's own cleanup
#   netsim_up ftxsim --delay-ms 25 --loss 0.001   # any further arguments go to netsim
#   ip netns exec "$NETSIM_NS_B" server ... & ip netns exec "$NETSIM_NS_A" client "$NETSIM_ADDR_B"
#   netsim_down                    # stops netsim and whatever still runs in the namespaces
# As a command (the link outlives it, for --duration-s at most; state in $NETSIM_STATE_DIR):
#   tests/netsim/link.sh up ftxsim [netsim options]     tests/netsim/link.sh down ftxsim
#
# Environment: NETSIM (the binary; default build/netsim), NETSIM_ADDR_A / NETSIM_ADDR_B
# (10.77.0.1 / 10.77.0.2), NETSIM_TCP_MEM_MAX (bytes, 67108864: the largest TCP buffer
# autotuning may grow to in the namespaces, so one stream can fill a long fat link),
# NETSIM_STATE_DIR (/tmp: netsim-PREFIX.log with netsim's counters, netsim-PREFIX.pid),
# NETSIM_TXQUEUELEN (20000: packets a device holds for netsim to read; a TUN device drops what
# does not fit, unseen by netsim, and with 4000 a fast sender overflowed it whenever netsim
# was off the CPU for a moment: on 2 cores iperf3 with BBR lost 4-11 % of its packets there
# instead of the 0.1 % asked for; such drops show as "TX dropped" in `ip -n NS -s link`).
# PREFIX: at most 14 characters (device names are limited to 15). Call netsim_up in the
# script's own shell, not in $(...) or a pipeline: it sets variables, and netsim follows its
# parent process out. Needs root, /dev/net/tun, iproute2 and ping (iputils-ping). Every wait
# is bounded; netsim runs for --duration-s (600 s unless given) at most, and when sourced with
# --exit-with-parent (it stops when the sourcing script dies, even by SIGKILL; namespaces left
# by such a death are removed by the next netsim_up of the same PREFIX).
#
# Kernel limits seen (6.18): net.ipv4.tcp_rmem/tcp_wmem are per namespace; net.core.rmem_max
# and wmem_max are not (writing them inside a namespace fails with EINVAL), so an explicit
# SO_RCVBUF / SO_SNDBUF (iperf3 -w) stays capped by the root namespace's value, while
# autotuning is not; net.ipv4.tcp_mem (the total for all sockets) and net.core.default_qdisc
# are global. A new namespace starts with the root namespace's congestion control and can
# switch its default only to one in the global net.ipv4.tcp_allowed_congestion_control (EPERM
# otherwise), though a root process may still pick any per socket. The root namespace's
# sysctls are never changed here.
# shellcheck shell=bash

NETSIM_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${NETSIM:=$NETSIM_REPO/build/netsim}"
: "${NETSIM_ADDR_A:=10.77.0.1}"
: "${NETSIM_ADDR_B:=10.77.0.2}"
: "${NETSIM_TCP_MEM_MAX:=67108864}"
: "${NETSIM_STATE_DIR:=/tmp}"
: "${NETSIM_TXQUEUELEN:=20000}"
NETSIM_PID=
NETSIM_PREFIX=
NETSIM_NS_A=
NETSIM_NS_B=
NETSIM_LOG=

_netsim_say() { echo "netsim: $*" >&2; }

# _netsim_alive PID: running (a zombie, an exited child not yet reaped, is not)
_netsim_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# _netsim_names PREFIX: sets the names of the namespaces, devices and state files
_netsim_names() {
  NETSIM_PREFIX=$1
  NETSIM_NS_A=${1}a NETSIM_NS_B=${1}b
  NETSIM_DEV_A=${1}0 NETSIM_DEV_B=${1}1
  NETSIM_LOG=$NETSIM_STATE_DIR/netsim-$1.log
  NETSIM_PID_FILE=$NETSIM_STATE_DIR/netsim-$1.pid
}

# _netsim_wait_ready PID FILE: until netsim wrote "ready" to FILE (10 s at most)
_netsim_wait_ready() {
  local _
  for _ in $(seq 200); do
    grep -qx ready "$2" 2>/dev/null && return 0
    _netsim_alive "$1" || return 1
    sleep 0.05
  done
  return 1
}

# _netsim_side NS DEV ADDR PEER: moves DEV into NS and makes it a point-to-point link to PEER
_netsim_side() {
  local ns=$1 dev=$2 addr=$3 peer=$4 max=$NETSIM_TCP_MEM_MAX
  ip netns add "$ns" &&
    ip link set "$dev" netns "$ns" &&
    ip -n "$ns" link set lo up &&
    ip -n "$ns" addr add "$addr" peer "$peer" dev "$dev" || return 1
  # IPv6 would only add router solicitations and the like to the link's counters.
  ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=1" 2>/dev/null || true
  ip -n "$ns" link set "$dev" txqueuelen "$NETSIM_TXQUEUELEN" up || return 1
  ip netns exec "$ns" sysctl -qw "net.ipv4.tcp_rmem=4096 131072 $max" "net.ipv4.tcp_wmem=4096 16384 $max" >&2 ||
    _netsim_say "could not raise the TCP buffers in $ns (a kernel older than 4.15?)"
}

# _netsim_wait_ping: until a ping from a to b is answered: ping itself retries, every 0.2 s,
# until the first answer or for 15 s at most (a fixed -W per try would fail long delays)
_netsim_wait_ping() {
  ip netns exec "$NETSIM_NS_A" ping -q -c 1 -i 0.2 -w 15 "$NETSIM_ADDR_B" >/dev/null 2>&1
}

# netsim_up PREFIX [netsim options]: starts netsim and the two namespaces; on failure undoes
# what it did and returns 1. Sets NETSIM_PID, NETSIM_NS_A/B, NETSIM_DEV_A/B, NETSIM_LOG.
netsim_up() {
  local prefix=${1:?netsim_up PREFIX [netsim options]}
  shift
  _netsim_names "$prefix"
  if [ ! -x "$NETSIM" ]; then _netsim_say "no netsim binary at $NETSIM (build target netsim, or set NETSIM)"; return 1; fi
  if ! command -v ping >/dev/null; then _netsim_say "no ping (Debian: apt-get install iputils-ping)"; return 1; fi
  if ip netns list | grep -qE "^($NETSIM_NS_A|$NETSIM_NS_B)( |\$)"; then
    if _netsim_is_ours "$(cat "$NETSIM_PID_FILE" 2>/dev/null)"; then
      _netsim_say "link $prefix is up already (netsim_down $prefix, or link.sh down $prefix)"
      return 1
    fi
    _netsim_say "removing namespaces left by a run of link $prefix that was killed"
    netsim_down "$prefix"
  fi
  local follow=(--exit-with-parent)  # a script killed with SIGKILL takes netsim along
  [ "${NETSIM_DETACH:-0}" = 1 ] && follow=()
  "$NETSIM" "${follow[@]}" "$@" "$NETSIM_DEV_A" "$NETSIM_DEV_B" >"$NETSIM_LOG" 2>&1 &
  NETSIM_PID=$!
  echo "$NETSIM_PID" >"$NETSIM_PID_FILE"
  if ! _netsim_wait_ready "$NETSIM_PID" "$NETSIM_LOG" ||
    ! _netsim_side "$NETSIM_NS_A" "$NETSIM_DEV_A" "$NETSIM_ADDR_A" "$NETSIM_ADDR_B" ||
    ! _netsim_side "$NETSIM_NS_B" "$NETSIM_DEV_B" "$NETSIM_ADDR_B" "$NETSIM_ADDR_A" ||
    ! _netsim_wait_ping; then
    _netsim_say "link $prefix did not come up: $(tail -n 3 "$NETSIM_LOG" 2>/dev/null | tr '\n' ' ')"
    netsim_down "$prefix"
    return 1
  fi
  _netsim_say "link $prefix up: $NETSIM_NS_A $NETSIM_ADDR_A <-> $NETSIM_ADDR_B $NETSIM_NS_B (netsim pid $NETSIM_PID $*)"
}

# _netsim_is_ours PID: PID is a netsim serving this prefix's devices (not a reused PID)
_netsim_is_ours() {
  [ -n "$1" ] && { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -q " $NETSIM_DEV_A $NETSIM_DEV_B"
}

# _netsim_stop PID: SIGTERM, then up to 5 s for it to go, then SIGKILL
_netsim_stop() {
  local pid=$1 _
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    _netsim_alive "$pid" || break
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true  # reaps it when it is this shell's child
}

# netsim_down [PREFIX]: stops what still runs in the namespaces, then netsim (it prints its
# counters to NETSIM_LOG), and deletes the namespaces. Safe to call twice or after a failure.
netsim_down() {
  local prefix=${1:-$NETSIM_PREFIX} ns pid pids
  [ -n "$prefix" ] || return 0
  _netsim_names "$prefix"
  for ns in "$NETSIM_NS_A" "$NETSIM_NS_B"; do  # processes left in our namespaces: started by us
    pids=$(ip netns pids "$ns" 2>/dev/null) || continue
    for pid in $pids; do _netsim_stop "$pid"; done
  done
  pid=$NETSIM_PID
  [ -n "$pid" ] || pid=$(cat "$NETSIM_PID_FILE" 2>/dev/null) || true
  if _netsim_is_ours "$pid"; then _netsim_stop "$pid"; fi
  NETSIM_PID=
  rm -f "$NETSIM_PID_FILE"
  for ns in "$NETSIM_NS_A" "$NETSIM_NS_B"; do
    if ip netns list | grep -qE "^$ns( |\$)"; then ip netns del "$ns" || _netsim_say "could not delete namespace $ns"; fi
  done
}

# netsim_counters: netsim's last words (forwarded and dropped packets per direction)
netsim_counters() { grep -E '^netsim: .*(->|stopping)' "$NETSIM_LOG" 2>/dev/null || true; }

# Run as a command rather than sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -uo pipefail
  case "${1:-}" in
    up)
      [ $# -ge 2 ] || { echo "usage: $0 up PREFIX [netsim options] | down PREFIX" >&2; exit 2; }
      shift
      trap 'exit 130' INT
      trap 'exit 143' TERM
      # netsim_up undoes itself on failure; this trap is for an interruption after it started
      # netsim (NETSIM_PID set). After success the link outlives this shell (no
      # --exit-with-parent), until `down` or --duration-s.
      up_done=0
      trap '[ "$up_done" = 1 ] || [ -z "$NETSIM_PID" ] || netsim_down "$NETSIM_PREFIX"' EXIT
      NETSIM_DETACH=1 netsim_up "$@" || exit 1
      up_done=1
      echo "a: ip netns exec $NETSIM_NS_A ...  ($NETSIM_ADDR_A)   b: ip netns exec $NETSIM_NS_B ...  ($NETSIM_ADDR_B)"
      ;;
    down)
      [ $# -eq 2 ] || { echo "usage: $0 down PREFIX" >&2; exit 2; }
      netsim_down "$2"
      netsim_counters
      ;;
    *) echo "usage: $0 up PREFIX [netsim options] | down PREFIX" >&2; exit 2 ;;
  esac
fi
