#!/usr/bin/env bash
# Large files over loopback: ftx against the tools a user would pick instead, same payload, same
# run, every server on 127.0.0.1 and started by this script with its own configuration:
#   ftx          `ftx put -q` / `ftx get -q` against `ftx serve` (SHA-256 verified end to end;
#                both the stored and the downloaded copy are fsynced before they are renamed
#                into place; no other tool here fsyncs: it matters in the disk table)
#   tcp (socat)  raw TCP with 1 MiB buffers, socat into `cat > file` / a file out of socat: the
#                ceiling, no protocol and no integrity check of its own
#   rsync        plain `rsync FILE rsync://…` / `rsync rsync://… FILE` against an rsync daemon
#   nginx        `curl -T` (WebDAV PUT) / `curl -o` (GET), sendfile on, body temp on the root's fs
#   vsftpd       `curl -T ftp://…` / `curl ftp://…`, local user "ftxbench"; active mode (curl
#                --ftp-port): curl 7.88's passive mode (Debian 12) stalls for 1 s at random before
#                it connects the data channel when many transfers run at once, a client bug that
#                would be charged to vsftpd (FTP_MODE=passive to see it)
#   scp          OpenSSH scp (SFTP protocol, the default since OpenSSH 9) with aes128-gcm,
#                against its own sshd (own host key, client key, config; no PAM)
# Payloads, each moved up (client -> server) and down (server -> client):
#   big   one random file of SIZE bytes (1 GiB), median of RUNS (3) runs
#   many  CLIENTS (64) clients at once, each moving its own copy of a random EACH-byte (16 MiB)
#         file: up, each uploads the same source to a distinct name; down, each downloads the
#         same stored file to a distinct local file. The time runs from starting the first
#         client to the last one finishing
# Every destination is removed before a run (nothing is a no-op) and every copy is compared
# with `cmp` to the source afterwards; a client that fails, times out or leaves a wrong copy
# marks its row "failed" and the benchmark goes on. Each (tool, payload, direction) gets a
# freshly started server, so a row's server peak memory is its own. Files stored for the
# downloads are copied into the root beforehand; for ftx they are uploaded with `ftx put` (to a
# separate, short-lived server) so they carry ftx's digest record as every ftx upload does.
# Two tables: every root and local file on tmpfs (/dev/shm), then the roots and downloaded
# copies on disk (a folder under DISK_DIR; the sources stay on tmpfs; no cache is dropped).
# Then ftx alone: server RSS before and after IDLE (1000) idle connections, and, for context,
# what one core hashes with SHA-256 (`openssl speed`). A benchmark, not a test: it asserts
# nothing about speed.
#
# Columns: median wall seconds; MB/s (1 MB = 1e6 B) = bytes moved / median s; ratio = MB/s /
# ftx's MB/s for the same table, payload and direction (below 1: slower than ftx); cli MiB =
# peak RSS of the largest client process (/usr/bin/time %M; for many clients the largest one);
# srv MiB = server peak over the row's runs: the larger of (a) the largest sum of PSS over the
# server's processes (the main one and every process it forked, sampled every 50 ms from /proc,
# so a process living less than that may be missed; PSS splits shared pages between the
# processes sharing them, so 64 forked sessions are not each charged for all of libc) and (b) the
# largest VmHWM (exact peak RSS) of any one of them; CPU s = client user+sys (summed over the
# clients) + the server's, median of the runs. The server's is the change over the run of
# /proc/PID/stat utime+stime+cutime+cstime summed over its processes, read once the processes
# it forked for the run are gone. Every server runs under a small python3 parent (wrap.py below)
# that is its child subreaper: what the server leaves orphaned (vsftpd's session processes) is
# reaped there and still counted. That parent also takes the memory samples (about 5 % of one
# core with 64 scp sessions; on this 2-core machine it competes with the transfer a little).
# The client processes run under `timeout RUN_TIMEOUT /usr/bin/time`.
#
# Usage: bench/peers.sh   (no arguments; environment variables)
#   SIZE (1073741824) RUNS (3) CLIENTS (64) EACH (16777216) IDLE (1000)
#   SMOKE=1: SIZE=32 MiB RUNS=1 CLIENTS=4 EACH=4 MiB IDLE=50 (well under a minute)
#   TOOLS="ftx tcp rsync nginx vsftpd scp"  TABLES="tmpfs disk"  PAYLOADS="big many"
#   DISK_DIR=folder on disk that receives a temporary work folder (/var/tmp)
#   FTX=path/to/ftx (default build/apps/ftx/ftx, else build/ftx)
#   RUN_TIMEOUT=seconds one client may take (300)
#   FTP_MODE=active (curl --ftp-port 127.0.0.1) or passive (EPSV/PASV), for vsftpd (active)
#   STRICT=1: exit 1 when any row failed
# Needs: curl, socat, rsync, nginx (with the DAV module, Debian's has it), vsftpd, openssh-server
# and -client, python3, openssl, /usr/bin/time; missing ones are installed with apt-get (on a
# machine with an init system, installing nginx, vsftpd or openssh-server also starts their
# system-wide services on their standard ports: this script does not use or stop those).
# System changes when run as root: a local user and group "ftxbench" (home "/", no home folder
# made; shell /bin/bash so that vsftpd's PAM stack, pam_shells, accepts it; an existing one
# without a home folder gets home "/") is created once if missing and kept for the next run;
# each run gives it a new random password (chpasswd; only curl's netrc file in the work folder
# holds it) and locks the password again at exit (passwd -l). vsftpd uses Debian's own
# /etc/pam.d/vsftpd (pam_service_name=vsftpd). /run/sshd (sshd's privilege separation folder)
# is created if missing.
# vsftpd needs root; run as another user its rows fail and the rest runs (sshd then only
# serves that user). Raises the open-file limit of its own processes to 4096 (IDLE + 512 if more)
# for the idle test.
# shellcheck disable=SC2317  # functions called by name (srv_$tool, cmd_$tool) or from traps
set -euo pipefail

if [ "${SMOKE:-0}" = 1 ]; then
  SIZE=${SIZE:-$((32 << 20))} RUNS=${RUNS:-1} CLIENTS=${CLIENTS:-4} EACH=${EACH:-$((4 << 20))} IDLE=${IDLE:-50}
fi
SIZE=${SIZE:-$((1 << 30))}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-64}
EACH=${EACH:-$((16 << 20))}
IDLE=${IDLE:-1000}
TOOLS=${TOOLS:-ftx tcp rsync nginx vsftpd scp}
TABLES=${TABLES:-tmpfs disk}
PAYLOADS=${PAYLOADS:-big many}
DISK_DIR=${DISK_DIR:-/var/tmp}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
FTP_MODE=${FTP_MODE:-active}
FTP_USER=ftxbench
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
FTX=$(ftx_binary "$REPO")

for v in SIZE RUNS CLIENTS EACH IDLE RUN_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { say "$v must be a positive integer, not '${!v}'"; exit 2; }
done
for t in $TOOLS; do case $t in ftx | tcp | rsync | nginx | vsftpd | scp) ;; *) say "unknown tool '$t'"; exit 2 ;; esac; done
for t in $TABLES; do case $t in tmpfs | disk) ;; *) say "unknown table '$t' (tmpfs, disk)"; exit 2 ;; esac; done
for t in $PAYLOADS; do case $t in big | many) ;; *) say "unknown payload '$t' (big, many)"; exit 2 ;; esac; done
case $FTP_MODE in active | passive) ;; *) say "FTP_MODE is active or passive"; exit 2 ;; esac
# socat and the server configurations take paths as they are: keep them plain
[[ $DISK_DIR =~ ^[A-Za-z0-9._/-]+$ ]] || { say "DISK_DIR may only hold A-Z a-z 0-9 . _ / -"; exit 2; }
# ftx first: every other row is compared with it
ORDER=()
for t in ftx tcp rsync nginx vsftpd scp; do [[ " $TOOLS " != *" $t "* ]] || ORDER+=("$t"); done

NOFILE=$((IDLE + 512 > 4096 ? IDLE + 512 : 4096))  # the idle test's server and client each hold IDLE sockets
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

W=$(mktemp -d /dev/shm/ftx-peers.XXXX)
D=          # the work folder on disk, made when the disk table runs
PIDS=()     # servers in flight (each stopped with its process tree)
CLIENT_PIDS=()
IDLE_PID=
LOCK_USER=
alive() {  # alive PID: the process exists and is not a zombie
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [ "${s%% *}" != Z ]
}
# stop_tree PID: SIGTERM to every process below PID (a server's wrapper, which then ends once
# they are gone), or to PID itself when it has none; SIGKILL to what is left after 3 s
stop_tree() {
  local all p _ left=
  mapfile -t all < <(descendants "$1")
  [ ${#all[@]} -gt 0 ] || all=("$1")
  for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 60); do
    left=
    for p in "$1" "${all[@]}"; do if alive "$p"; then left=$p; break; fi; done
    [ -n "$left" ] || break
    sleep 0.05
  done
  [ -z "$left" ] || for p in "$1" "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait "$1" 2>/dev/null || true
}
forget() {  # forget PID: drop it from PIDS
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local p
  trap - INT TERM
  for p in "${CLIENT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done  # timeout passes it on
  [ -z "$IDLE_PID" ] || kill "$IDLE_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do stop_tree "$p"; done
  for p in "${CLIENT_PIDS[@]}" $IDLE_PID; do wait "$p" 2>/dev/null || true; done
  [ -z "$LOCK_USER" ] || passwd -q -l "$FTP_USER" >/dev/null 2>&1 || true
  rm -rf "$W"
  [ -z "$D" ] || rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export XDG_CONFIG_HOME=$W/config
chmod 711 "$W"  # vsftpd's user must be able to pass through to its root

# ---------------------------------------------------------------- tools

bin() {  # bin NAME: the path of a program, also in /usr/sbin and /sbin (not on every user's PATH)
  command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || { [ -x "/sbin/$1" ] && echo "/sbin/$1"; }
}
uses() { [[ " $TOOLS " == *" $1 "* ]]; }

ensure_tools() {
  local missing=()
  [ -x /usr/bin/time ] || missing+=(time)
  bin python3 >/dev/null || missing+=(python3)
  bin openssl >/dev/null || missing+=(openssl)
  if uses nginx || uses vsftpd; then bin curl >/dev/null || missing+=(curl); fi
  ! uses tcp || bin socat >/dev/null || missing+=(socat)
  ! uses rsync || bin rsync >/dev/null || missing+=(rsync)
  ! uses nginx || bin nginx >/dev/null || missing+=(nginx)
  ! uses vsftpd || bin vsftpd >/dev/null || missing+=(vsftpd)
  if uses scp; then
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    { bin scp && bin ssh-keygen; } >/dev/null || missing+=(openssh-client)
  fi
  if [ ${#missing[@]} -gt 0 ]; then install_packages "${missing[@]}" || say "could not install ${missing[*]}"; fi
}

# ---------------------------------------------------------------- helpers

descendants() {  # descendants PID: every process below PID, one a line
  local c
  # shellcheck disable=SC2013  # the files hold numbers separated by spaces
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done
}
settle() {  # settle PID: wait (up to 5 s) until the server's processes are back to those it idles with
  local _
  for _ in $(seq 100); do
    [ "$(descendants "$1" | sort | tr '\n' ' ')" != "$SRV_BASE" ] || return 0
    sleep 0.05
  done
}
now() { echo "${EPOCHREALTIME/,/.}"; }

human() {  # human BYTES [SEP]: "1 GiB", "16 MiB", ... (SEP between number and unit, default a space)
  local b=$1 sep=${2- } u d
  for u in GiB MiB KiB; do
    case $u in GiB) d=$((1 << 30)) ;; MiB) d=$((1 << 20)) ;; KiB) d=1024 ;; esac
    if [ "$b" -ge "$d" ] && [ $((b % d)) = 0 ]; then echo "$((b / d))$sep$u"; return; fi
  done
  echo "$b${sep}B"
}

declare -A T C CR SR FAIL  # per row key "table|payload|dir|tool": times, CPU s, client KiB, server KiB, failure
row_name() {  # row_name KEY: "tmpfs 1 GiB up nginx"
  local t p d tool; IFS='|' read -r t p d tool <<<"$1"
  echo "$t ${PAYLOAD_LABEL[$p]} $d ${TOOL_LABEL[$tool]}"
}
fail() {  # fail KEY REASON
  FAIL[$1]=$2
  say "$(row_name "$1"): failed: $2"
}

# Every server runs under wrap.py, which forks it, stays its parent and is its "child subreaper":
# processes the server leaves orphaned (vsftpd's session processes are not reaped by their
# parent) are reaped here, so their CPU time still lands in the tree (in this one's cutime).
# Every 50 ms it samples the memory of the processes below it: the PSS summed over them and the
# VmHWM of each; "PEAK_PSS_KIB PEAK_HWM_KIB" is kept up to date in OUT. It exits once it has no
# children left (stop_tree stops the server, never this one, so that it reaps them).
cat >"$W/wrap.py" <<'EOF'
import ctypes, os, signal, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
execd_r, execd_w = os.pipe()  # close-on-exec: EOF once the server runs (not sampling the fork of this)
server = os.fork()
if server == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"{cmd[0]}: {e.strerror}", file=sys.stderr)
    os._exit(127)
os.close(execd_w)
os.read(execd_r, 1)
signal.signal(signal.SIGINT, signal.SIG_IGN)
me, done, peak = os.getpid(), False, None
def reap(*_):
    global done
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left: the server and whatever it left behind are gone
            done = True
            return
        if pid == 0:
            return
signal.signal(signal.SIGCHLD, reap)
def tree():
    procs, i = [me], 0
    while i < len(procs):
        q = procs[i]; i += 1
        try:
            for t in os.listdir(f"/proc/{q}/task"):
                with open(f"/proc/{q}/task/{t}/children") as f:
                    procs += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return procs[1:]
def kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
pss = hwm = 0
reap()
while not done:
    total = 0
    for q in tree():
        total += kib(f"/proc/{q}/smaps_rollup", "Pss:") or kib(f"/proc/{q}/status", "VmRSS:")
        hwm = max(hwm, kib(f"/proc/{q}/status", "VmHWM:"))
    pss = max(pss, total)
    if (pss, hwm) != peak:
        peak = (pss, hwm)
        with open(out + ".tmp", "w") as f:
            f.write(f"{pss} {hwm}\n")
        os.replace(out + ".tmp", out)
    time.sleep(0.05)
EOF
WRAP=(python3 "$W/wrap.py" "$W/peak.out")
server_ticks() {  # server_ticks WRAPPER: CPU ticks of every process below the wrapper and of the orphans it reaped
  local stat p t
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  t=$(awk '{ print $14 + $15 }' <<<"${stat##*) }")
  for p in $(descendants "$1"); do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}
read_peak() {  # sets PEAK: the server's peak memory so far, KiB (see wrap.py), or empty
  PEAK=$(awk '{ print ($1 > $2 ? $1 : $2) }' "$W/peak.out" 2>/dev/null || true)
}

# ---------------------------------------------------------------- servers
# srv_TOOL PORT ROOT: runs the server in the foreground (exec), for GROUP_DIR (up or down); the
# file served for a download is ROOT/GROUP_NAME, uploads go to ROOT/up/.

srv_ftx() {  # the port is chosen by ftx (port 0)
  local extra=()
  [ "$GROUP_N" = 1 ] || extra=(--max-per-client $((GROUP_N > 200 ? GROUP_N : 200)))
  exec "${WRAP[@]}" "$FTX" serve --root "$2" --listen 127.0.0.1:0 --min-free 0 "${extra[@]}"
}

srv_tcp() {  # forks a child per connection: up, each writes to ROOT/up/<client port>; down, each sends the file
  local backlog=$((GROUP_N > 128 ? GROUP_N : 128))
  if [ "$GROUP_DIR" = up ]; then
    # shellcheck disable=SC2016  # for the shell socat runs
    cd "$2/up" && exec "${WRAP[@]}" socat -u -b 1048576 "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork,backlog=$backlog" \
      SYSTEM:'exec cat >"$SOCAT_PEERPORT"',nofork
  else
    cd "$2" && exec "${WRAP[@]}" socat -U -b 1048576 "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr,fork,backlog=$backlog" \
      "OPEN:$GROUP_NAME,rdonly"
  fi
}

srv_rsync() {
  {
    echo "use chroot = no"
    echo "log file = $W/rsyncd.log"
    echo "[mod]"
    echo "  path = $2"
    echo "  read only = no"
    echo "  use chroot = no"
    echo "  numeric ids = yes"
    # as root the daemon would switch to "nobody", who cannot write into the bench folder
    if [ "$(id -u)" = 0 ]; then echo "  uid = 0"; echo "  gid = 0"; fi
  } >"$W/rsyncd.conf"
  exec "${WRAP[@]}" rsync --daemon --no-detach --config="$W/rsyncd.conf" --port="$1" --address=127.0.0.1
}

srv_nginx() {
  local n=$W/nginx
  mkdir -p "$n/logs" "$n/tmp" "$BASE/nginx-body"
  {
    [ "$(id -u)" != 0 ] || echo "user root root;"  # as root, workers would be www-data: no write access
    echo "daemon off;"
    echo "master_process on;"
    echo "worker_processes 2;"
    echo "pid $n/nginx.pid;"
    echo "error_log $n/logs/error.log warn;"
    echo "events { worker_connections 1024; }"
    echo "http {"
    echo "  access_log off;"
    echo "  sendfile on;"
    echo "  tcp_nopush on;"
    echo "  default_type application/octet-stream;"
    # a PUT's body is written here, then renamed to its name: on the root's filesystem, no copy
    echo "  client_body_temp_path $BASE/nginx-body;"
    for t in proxy fastcgi uwsgi scgi; do echo "  ${t}_temp_path $n/tmp/$t;"; done
    echo "  server {"
    echo "    listen 127.0.0.1:$1;"
    echo "    root $2;"
    echo "    location / {"
    echo "      dav_methods PUT;"
    echo "      create_full_put_path on;"
    echo "      client_max_body_size 0;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$n/nginx.conf"
  exec "${WRAP[@]}" "$(bin nginx)" -e "$n/logs/error.log" -p "$n" -c "$n/nginx.conf"
}

srv_vsftpd() {
  local lo=$((30000 + RANDOM % 25000))
  mkdir -p "$W/vsftpd-empty"
  {
    echo "listen=YES"
    echo "listen_ipv6=NO"
    echo "listen_address=127.0.0.1"
    echo "listen_port=$1"
    echo "background=NO"
    echo "anonymous_enable=NO"
    echo "local_enable=YES"
    echo "write_enable=YES"
    echo "local_umask=022"
    echo "local_root=$2"
    echo "pasv_enable=YES"
    echo "pasv_address=127.0.0.1"
    echo "pasv_min_port=$lo"
    echo "pasv_max_port=$((lo + 999))"
    echo "port_enable=YES"
    echo "connect_from_port_20=NO"
    echo "seccomp_sandbox=NO"
    echo "max_per_ip=0"
    echo "max_clients=0"
    echo "secure_chroot_dir=$W/vsftpd-empty"
    echo "ftpd_banner=ftx bench"
    echo "pam_service_name=vsftpd"
    echo "userlist_enable=NO"
    echo "xferlog_enable=NO"
    echo "dirmessage_enable=NO"
  } >"$W/vsftpd.conf"
  exec "${WRAP[@]}" "$(bin vsftpd)" "$W/vsftpd.conf"
}

srv_scp() {
  local s=$W/ssh m=$((GROUP_N > 90 ? GROUP_N + 10 : 100))
  {
    echo "Port $1"
    echo "ListenAddress 127.0.0.1"
    echo "HostKey $s/host_key"
    echo "PidFile $s/sshd.pid"
    echo "AuthorizedKeysFile $s/client_key.pub"
    echo "PermitRootLogin prohibit-password"
    echo "PubkeyAuthentication yes"
    echo "PasswordAuthentication no"
    echo "KbdInteractiveAuthentication no"
    echo "StrictModes no"
    echo "UsePAM no"
    echo "MaxStartups $m:30:$((2 * m))"
    echo "MaxSessions $m"
    echo "Ciphers aes128-gcm@openssh.com"
    echo "Subsystem sftp internal-sftp"
    echo "PrintMotd no"
    echo "X11Forwarding no"
    echo "LogLevel ERROR"
  } >"$s/sshd_config"
  exec "${WRAP[@]}" /usr/sbin/sshd -D -e -f "$s/sshd_config"
}

# ---------------------------------------------------------------- clients
# cmd_TOOL DIR I: sets CMD, client I's command line (upload: GROUP_SRC to up/fI; download:
# GROUP_NAME to DL/fI)

cmd_ftx() {
  if [ "$1" = up ]; then CMD=("$FTX" put -q "$GROUP_SRC" "up/f$2" -s "127.0.0.1:$SRV_PORT")
  else CMD=("$FTX" get -q "$GROUP_NAME" "$DL/f$2" -s "127.0.0.1:$SRV_PORT"); fi
}
cmd_tcp() {  # up: not -u, so that socat waits for the server to close, i.e. to have written it all
  if [ "$1" = up ]; then CMD=(socat -b 1048576 -t 60 "OPEN:$GROUP_SRC,rdonly" "TCP:127.0.0.1:$SRV_PORT")
  else CMD=(socat -u -b 1048576 "TCP:127.0.0.1:$SRV_PORT" "CREATE:$DL/f$2"); fi
}
cmd_rsync() {
  if [ "$1" = up ]; then CMD=(rsync "$GROUP_SRC" "rsync://127.0.0.1:$SRV_PORT/mod/up/f$2")
  else CMD=(rsync "rsync://127.0.0.1:$SRV_PORT/mod/$GROUP_NAME" "$DL/f$2"); fi
}
cmd_nginx() {
  if [ "$1" = up ]; then CMD=(curl -sS -f -T "$GROUP_SRC" "http://127.0.0.1:$SRV_PORT/up/f$2")
  else CMD=(curl -sS -f -o "$DL/f$2" "http://127.0.0.1:$SRV_PORT/$GROUP_NAME"); fi
}
cmd_vsftpd() {  # the password is in a netrc file, not on the command line
  local mode=()
  [ "$FTP_MODE" = passive ] || mode=(--ftp-port 127.0.0.1)
  if [ "$1" = up ]; then CMD=(curl -sS "${mode[@]}" --netrc-file "$W/netrc" -T "$GROUP_SRC" "ftp://127.0.0.1:$SRV_PORT/up/f$2")
  else CMD=(curl -sS "${mode[@]}" --netrc-file "$W/netrc" -o "$DL/f$2" "ftp://127.0.0.1:$SRV_PORT/$GROUP_NAME"); fi
}
SSH_OPTS=()
cmd_scp() {
  local u; u=$(id -un)
  if [ "$1" = up ]; then CMD=(scp "${SSH_OPTS[@]}" -P "$SRV_PORT" "$GROUP_SRC" "$u@127.0.0.1:$ROOT/up/f$2")
  else CMD=(scp "${SSH_OPTS[@]}" -P "$SRV_PORT" "$u@127.0.0.1:$ROOT/$GROUP_NAME" "$DL/f$2"); fi
}

# ---------------------------------------------------------------- setup per tool

declare -A PREP_ERR  # per tool: why it cannot run at all
prepare_tools() {
  local t
  for t in "${ORDER[@]}"; do
    case $t in
      ftx) [ -x "$FTX" ] || PREP_ERR[ftx]="no ftx binary at $FTX" ;;
      tcp) bin socat >/dev/null || PREP_ERR[tcp]="socat is not installed" ;;
      rsync) bin rsync >/dev/null || PREP_ERR[rsync]="rsync is not installed" ;;
      nginx)
        if ! bin nginx >/dev/null || ! bin curl >/dev/null; then PREP_ERR[nginx]="nginx or curl is not installed"
        elif [[ $("$(bin nginx)" -V 2>&1) != *http_dav_module* ]]; then PREP_ERR[nginx]="nginx has no http_dav_module"; fi ;;
      vsftpd)
        if ! bin vsftpd >/dev/null || ! bin curl >/dev/null; then PREP_ERR[vsftpd]="vsftpd or curl is not installed"
        elif [ "$(id -u)" != 0 ]; then PREP_ERR[vsftpd]="vsftpd needs root"
        else prepare_ftp_user || PREP_ERR[vsftpd]="could not set up user $FTP_USER"; fi ;;
      scp)
        if [ ! -x /usr/sbin/sshd ] || ! bin scp >/dev/null || ! bin ssh-keygen >/dev/null; then PREP_ERR[scp]="openssh-server or -client is not installed"
        else prepare_ssh || PREP_ERR[scp]="could not make the ssh keys"; fi ;;
    esac
  done
}

prepare_ftp_user() {  # the local user vsftpd logs in (made once, kept), with a fresh random password
  local pw
  if ! id "$FTP_USER" >/dev/null 2>&1; then
    say "creating local user $FTP_USER (for vsftpd; kept for the next run)"
    useradd -M -d / -s /bin/bash -c "ftx bench/peers.sh vsftpd login" "$FTP_USER" || return 1
  fi
  # vsftpd changes to the home folder (before local_root): it must exist
  [ -d "$(getent passwd "$FTP_USER" | cut -d: -f6)" ] || usermod -d / "$FTP_USER" || return 1
  pw=$(head -c 32 /dev/urandom | base64 | tr -dc A-Za-z0-9)
  LOCK_USER=1
  echo "$FTP_USER:$pw" | chpasswd || return 1
  (umask 077 && echo "machine 127.0.0.1 login $FTP_USER password $pw" >"$W/netrc")
}

prepare_ssh() {
  mkdir -p "$W/ssh"
  ssh-keygen -q -t ed25519 -N '' -C ftx-bench-host -f "$W/ssh/host_key" >/dev/null || return 1
  ssh-keygen -q -t ed25519 -N '' -C ftx-bench-client -f "$W/ssh/client_key" >/dev/null || return 1
  [ "$(id -u)" != 0 ] || [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
  SSH_OPTS=(-q -F /dev/null -i "$W/ssh/client_key" -o IdentitiesOnly=yes -o BatchMode=yes
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    -o Ciphers=aes128-gcm@openssh.com)
}

# ---------------------------------------------------------------- one row

SRV_PID='' SRV_PORT='' SRV_BASE='' ERR=''
start_server() {  # start_server TOOL ROOT: a fresh server; sets SRV_PID, SRV_PORT, SRV_BASE (or ERR, status 1)
  local tool=$1 root=$2 log=$W/$1-server.log _ try
  SRV_PID='' SRV_PORT=''
  rm -f "$W/peak.out"
  if [ "$tool" = ftx ]; then
    srv_ftx 0 "$root" </dev/null >/dev/null 2>"$log" &
    SRV_PID=$!; PIDS+=("$SRV_PID")
    for _ in $(seq 100); do
      SRV_PORT=$(sed -nE 's/.*serving .* on 127\.0\.0\.1:([0-9]+).*/\1/p' "$log" | head -n 1)
      [ -n "$SRV_PORT" ] || ! kill -0 "$SRV_PID" 2>/dev/null && break
      sleep 0.05
    done
    [ -n "$SRV_PORT" ] || { ERR="server did not start: $(last_line "$log")"; stop_server; return 1; }
  else
    for try in 1 2 3 4 5; do  # a free port may be taken before the server binds it: try another
      SRV_PORT=$(free_port)
      "srv_$tool" "$SRV_PORT" "$root" </dev/null >/dev/null 2>"$log" &
      SRV_PID=$!; PIDS+=("$SRV_PID")
      wait_listening "$SRV_PORT" "$SRV_PID" && break
      ERR="server did not start: $(last_line "$log")"
      stop_server
      [ "$try" != 5 ] || return 1
    done
  fi
  if [ "$tool" = nginx ]; then  # idles with its 2 workers
    for _ in $(seq 100); do [ "$(descendants "$SRV_PID" | wc -l)" -ge 3 ] && break; sleep 0.05; done
  fi
  for _ in $(seq 100); do [ ! -e "$W/peak.out" ] || break; sleep 0.05; done  # the first memory sample
  SRV_BASE=$(descendants "$SRV_PID" | sort | tr '\n' ' ')
}
stop_server() {
  [ -n "$SRV_PID" ] || return 0
  stop_tree "$SRV_PID"
  forget "$SRV_PID"
  SRV_PID=
}

# run_batch TOOL DIR N: N clients at once; sets SECS (wall), CCPU (user+sys summed), CRSS (KiB,
# the largest); status 0 when every client exited 0, else ERR says why
run_batch() {
  local tool=$1 dir=$2 n=$3 i st rc=0 t0 t1
  rm -f "$W"/time.* "$W"/client.*.err
  CLIENT_PIDS=()
  ERR=
  t0=$(now)
  for ((i = 0; i < n; i++)); do
    "cmd_$tool" "$dir" "$i"
    timeout "$RUN_TIMEOUT" /usr/bin/time -o "$W/time.$i" -f '%e %U %S %M' "${CMD[@]}" \
      </dev/null >/dev/null 2>"$W/client.$i.err" &
    CLIENT_PIDS+=($!)
  done
  for i in "${!CLIENT_PIDS[@]}"; do
    st=0
    wait "${CLIENT_PIDS[$i]}" || st=$?
    if [ $st != 0 ] && [ $rc = 0 ]; then
      rc=$st
      ERR="client $((i + 1)) of $n: exit $st$([ $st != 124 ] || echo " (over RUN_TIMEOUT=$RUN_TIMEOUT s)"): $(last_line "$W/client.$i.err")"
    fi
  done
  t1=$(now)
  CLIENT_PIDS=()
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  read -r CCPU CRSS < <(cat "$W"/time.* 2>/dev/null | awk 'NF == 4 { c += $2 + $3; if ($4 > m) m = $4 } END { printf "%.2f %d\n", c, m }')
  return $rc
}

verify() {  # verify DIR N SRC: ROOT/up holds N files (up) or DL holds f0..f(N-1) (down), each equal to SRC
  local f k=0
  if [ "$1" = up ]; then
    while IFS= read -r -d '' f; do
      k=$((k + 1))
      cmp -s "$f" "$3" || { ERR="the copy ${f#"$ROOT/"} differs from the source"; return 1; }
    done < <(find "$ROOT/up" -type f -print0)
    [ "$k" = "$2" ] || { ERR="$k copies on the server instead of $2"; return 1; }
  else
    for ((k = 0; k < $2; k++)); do
      [ -f "$DL/f$k" ] || { ERR="no local copy f$k"; return 1; }
      cmp -s "$DL/f$k" "$3" || { ERR="the local copy f$k differs from the source"; return 1; }
    done
  fi
}

seed() {  # seed TOOL: ROOT/GROUP_NAME, the file the downloads fetch
  if [ "$1" != ftx ]; then cp "$GROUP_SRC" "$ROOT/$GROUP_NAME"; return; fi
  start_server ftx "$ROOT" || return 1
  if ! "$FTX" put -q "$GROUP_SRC" "$GROUP_NAME" -s "127.0.0.1:$SRV_PORT" </dev/null >/dev/null 2>"$W/seed.err"; then
    ERR="could not store the file to download: $(last_line "$W/seed.err")"
    stop_server
    return 1
  fi
  stop_server
}

empty() { find "$1" -mindepth 1 -delete; }  # (ROOT/up stays: socat's server works in it)

bench_row() {  # bench_row TABLE PAYLOAD DIR TOOL
  local table=$1 payload=$2 dir=$3 tool=$4 key r c0 c1
  key="$table|$payload|$dir|$tool"
  GROUP_DIR=$dir
  if [ "$payload" = big ]; then GROUP_N=1 GROUP_SRC=$W/big.src GROUP_NAME=big.bin
  else GROUP_N=$CLIENTS GROUP_SRC=$W/each.src GROUP_NAME=each.bin; fi
  if [ -n "${PREP_ERR[$tool]:-}" ]; then fail "$key" "${PREP_ERR[$tool]}"; return; fi
  ROOT=$BASE/root DL=$BASE/dl
  rm -rf "$ROOT" "$DL" "$BASE/nginx-body"
  mkdir -p "$ROOT/up" "$DL"
  if [ "$dir" = down ] && ! seed "$tool"; then fail "$key" "${ERR:-could not store the file to download}"; return; fi
  [ "$tool" != vsftpd ] || chown -R "$FTP_USER:" "$ROOT"
  if ! start_server "$tool" "$ROOT"; then fail "$key" "$ERR"; return; fi
  for r in $(seq "$RUNS"); do
    empty "$ROOT/up"; empty "$DL"  # an empty destination
    c0=$(server_ticks "$SRV_PID")
    if ! run_batch "$tool" "$dir" "$GROUP_N"; then settle "$SRV_PID"; fail "$key" "$ERR"; break; fi
    settle "$SRV_PID"
    c1=$(server_ticks "$SRV_PID")
    if ! verify "$dir" "$GROUP_N" "$GROUP_SRC"; then fail "$key" "$ERR"; break; fi
    T[$key]+="$SECS "
    C[$key]+="$(awk -v a="$CCPU" -v b="$c0" -v c="$c1" -v t="$TICK" 'BEGIN { printf "%.2f", a + (c - b) / t }') "
    [ "${CR[$key]:-0}" -ge "$CRSS" ] || CR[$key]=$CRSS
    say "$(row_name "$key") run $r/$RUNS: $SECS s"
    empty "$ROOT/up"; empty "$DL"  # free the copies now
  done
  read_peak
  SR[$key]=$PEAK
  stop_server
  rm -rf "$ROOT" "$DL" "$BASE/nginx-body"
}

# ---------------------------------------------------------------- tables

declare -A PAYLOAD_LABEL PAYLOAD_BYTES
PAYLOAD_LABEL[big]=$(human "$SIZE") PAYLOAD_BYTES[big]=$SIZE
PAYLOAD_LABEL[many]=${CLIENTS}x$(human "$EACH" '') PAYLOAD_BYTES[many]=$((CLIENTS * EACH))
declare -A TOOL_LABEL=([ftx]=ftx [tcp]="tcp (socat)" [rsync]=rsync [nginx]=nginx [vsftpd]=vsftpd [scp]=scp)

print_table() {  # print_table TABLE
  local table=$1 payload dir tool key s ref cpu fmt='%-12s %-4s %-9s %8s %8s %6s %7s %7s %7s\n'
  echo
  if [ "$table" = tmpfs ]; then echo "roots and local files on tmpfs ($W)"
  else echo "roots and downloaded copies on disk ($D, $(df --output=fstype "$D" | tail -n 1)); sources on tmpfs"; fi
  # shellcheck disable=SC2059
  printf "$fmt" tool dir payload "median s" "MB/s" ratio "cli MiB" "srv MiB" "CPU s"
  for payload in $PAYLOADS; do
    for dir in up down; do
      ref=
      if [ -z "${FAIL[$table|$payload|$dir|ftx]:-}" ] && [ -n "${T[$table|$payload|$dir|ftx]:-}" ]; then
        ref=$(awk -v b="${PAYLOAD_BYTES[$payload]}" -v s="$(median <<<"${T[$table|$payload|$dir|ftx]}")" 'BEGIN { print b / s / 1e6 }')
      fi
      for tool in "${ORDER[@]}"; do
        key="$table|$payload|$dir|$tool"
        if [ -n "${FAIL[$key]:-}" ] || [ -z "${T[$key]:-}" ]; then
          # shellcheck disable=SC2059
          printf "$fmt" "${TOOL_LABEL[$tool]}" "$dir" "${PAYLOAD_LABEL[$payload]}" failed - - - - -
          continue
        fi
        s=$(median <<<"${T[$key]}")
        cpu=$(median <<<"${C[$key]:-}")
        awk -v f="$fmt" -v t="${TOOL_LABEL[$tool]}" -v d="$dir" -v p="${PAYLOAD_LABEL[$payload]}" -v s="$s" \
          -v b="${PAYLOAD_BYTES[$payload]}" -v ref="$ref" -v cr="${CR[$key]:-}" -v sr="${SR[$key]:-}" -v cpu="$cpu" 'BEGIN {
          mbs = b / s / 1e6
          printf f, t, d, p, sprintf("%.3f", s), sprintf("%.0f", mbs), (ref == "" ? "-" : sprintf("%.2f", mbs / ref)),
            (cr == "" ? "-" : sprintf("%.1f", cr / 1024)), (sr == "" ? "-" : sprintf("%.1f", sr / 1024)),
            (cpu == "" ? "-" : sprintf("%.2f", cpu)) }'
      done
    done
  done
  echo "median of $RUNS run(s), 127.0.0.1, $(nproc) cores$([[ " $PAYLOADS " != *" many "* ]] ||
    echo "; ${PAYLOAD_LABEL[many]}: $CLIENTS clients at once, each $(human "$EACH"), wall time from the first start to the last end")"
  echo "MB/s = bytes / median s (1 MB = 1e6 B); ratio = MB/s / ftx's MB/s (below 1: slower than ftx); cli MiB = largest client's peak RSS;"
  echo "srv MiB = server peak (max of the sampled PSS sum over its processes and any one's VmHWM); CPU s = client + server user+sys"
}

# ---------------------------------------------------------------- idle connections (ftx)

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
sockets() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }

idle_test() {
  local lim=$((IDLE + 16 > 2000 ? IDLE + 16 : 2000)) log=$W/idle-server.log before after s0 _ line idle_in
  rm -rf "$W/idle-root"
  "$FTX" serve --root "$W/idle-root" --listen 127.0.0.1:0 --min-free 0 --max-connections "$lim" --max-per-client "$lim" \
    </dev/null >/dev/null 2>"$log" &
  SRV_PID=$!; PIDS+=("$SRV_PID"); SRV_PORT=
  for _ in $(seq 100); do
    SRV_PORT=$(sed -nE 's/.*serving .* on 127\.0\.0\.1:([0-9]+).*/\1/p' "$log" | head -n 1)
    [ -n "$SRV_PORT" ] || ! kill -0 "$SRV_PID" 2>/dev/null && break
    sleep 0.05
  done
  if [ -z "$SRV_PORT" ]; then echo "idle connections: ftx did not start: $(last_line "$log")"; stop_server; return; fi
  before=$(rss_kib "$SRV_PID")
  s0=$(sockets "$SRV_PID")
  # holds IDLE connections open until its standard input closes
  coproc IDLEPY { python3 -c '
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
print("ready", flush=True)
sys.stdin.read()
' "$SRV_PORT" "$IDLE" 2>"$W/idle-client.err"; }
  # shellcheck disable=SC2153  # set by coproc
  IDLE_PID=$IDLEPY_PID idle_in=${IDLEPY[1]}
  line=
  read -r -t "$RUN_TIMEOUT" line <&"${IDLEPY[0]}" || true
  if [ "$line" != ready ]; then
    echo "idle connections: the client failed: $(last_line "$W/idle-client.err")"
  else
    for _ in $(seq 200); do  # until the server holds them all (accepted), up to 10 s
      [ "$(sockets "$SRV_PID")" -lt $((s0 + IDLE)) ] || break
      sleep 0.05
    done
    after=$(rss_kib "$SRV_PID")
    if [ "$(sockets "$SRV_PID")" -lt $((s0 + IDLE)) ]; then
      echo "idle connections: the server holds only $(($(sockets "$SRV_PID") - s0)) of $IDLE"
    else
      awk -v n="$IDLE" -v a="$before" -v b="$after" 'BEGIN {
        printf "%d idle connections: ftx server RSS %.1f MiB -> %.1f MiB (+%.1f MiB, %.1f KiB a connection)\n",
          n, a / 1024, b / 1024, (b - a) / 1024, (b - a) / n }'
    fi
  fi
  eval "exec ${idle_in}>&-"
  wait "$IDLE_PID" 2>/dev/null || true
  IDLE_PID=
  stop_server
}

# ---------------------------------------------------------------- main

ensure_tools
bin python3 >/dev/null || { say "python3 is needed (it runs every server, see wrap.py)"; exit 1; }
prepare_tools

say "making the sources: $(human "$SIZE") and $(human "$EACH") of random bytes in $W"
head -c "$SIZE" /dev/urandom >"$W/big.src" &
wait $!
head -c "$EACH" /dev/urandom >"$W/each.src"

for table in $TABLES; do
  if [ "$table" = tmpfs ]; then BASE=$W/tmpfs
  else
    D=$(mktemp -d "$DISK_DIR/ftx-peers.XXXX")
    chmod 711 "$D"
    BASE=$D
  fi
  mkdir -p "$BASE"; chmod 711 "$BASE"
  for payload in $PAYLOADS; do
    for dir in up down; do
      for tool in "${ORDER[@]}"; do bench_row "$table" "$payload" "$dir" "$tool"; done
    done
  done
  print_table "$table"
  if [ "$table" = disk ]; then rm -rf "$D"; D=; else rm -rf "$BASE"; fi
done

echo
if [ -x "$FTX" ]; then idle_test; else echo "idle connections: no ftx binary at $FTX"; fi
sha=$(openssl speed -seconds 1 -bytes 16384 -evp sha256 2>/dev/null | awk '$1 == "sha256" { v = $NF; sub(/k$/, "", v); printf "%.0f", v / 1000 }' || true)
echo "SHA-256 one core: ${sha:-?} MB/s (openssl speed, 16 KiB blocks)"

for key in "${!FAIL[@]}"; do echo "failed: $(row_name "$key"): ${FAIL[$key]}"; done | sort
if [ "${STRICT:-0}" = 1 ] && [ -n "${!FAIL[*]}" ]; then exit 1; fi
exit 0
