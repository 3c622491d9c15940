#!/usr/bin/env bash
# Builds the project's Dockerfile with podman (no Docker engine here), runs the image with a
# named volume and a port published on 127.0.0.1, and checks it as a user would: put and get
# from the host with the host's ftx, the file in the volume, the health check, and a prompt,
# clean exit on `stop`.
#
# Usage: docker_test.sh PATH/TO/ftx [PROJECT_DIR]
# Needs root. Installs podman, runc, uidmap and debootstrap when missing, and fails loudly
# when it cannot. Docker Hub is out of reach, so the debian:bookworm-slim base is made once
# with debootstrap from the mirror in /etc/apt and cached under /var/tmp/ftx-docker.
set -euo pipefail
FTX=$(realpath "$1")
PROJECT=$(realpath "${2:-$(dirname "$0")/../..}")
CACHE=/var/tmp/ftx-docker
IMAGE=localhost/ftx:test
NAME=ftx-test-$$
VOLUME=ftx-test-data-$$
T=$(mktemp -d "${TMPDIR:-/tmp}/ftx-docker-XXXXXX")
passed=0
failed=0

say() { printf '[docker-test] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); say "FAIL: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman)"

# ---- tools
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq podman runc uidmap debootstrap >/dev/null || die "cannot install podman/runc/debootstrap"
fi

# Private podman settings, nothing written to /etc/containers: this kernel refuses to raise
# hard rlimits and crun rejects its cgroup layout, so runc, capped ulimits and cgroupfs; the
# log in a file (k8s-file), not in a journal that may or may not be running.
export CONTAINERS_CONF="$T/containers.conf"
cat >"$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
PODMAN=(podman)
if ! podman info >/dev/null 2>"$T/info.err"; then
  say "podman info failed ($(tail -1 "$T/info.err")); trying vfs storage"
  PODMAN=(podman --storage-driver vfs)
  "${PODMAN[@]}" info >/dev/null || die "podman does not work on this machine"
fi

cleanup() {
  "${PODMAN[@]}" rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  "${PODMAN[@]}" volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT

# ---- base image
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk 'BEGIN{RS=""} { u=""; ok=0; n=split($0, L, "\n")
           for (i=1;i<=n;i++) { if (L[i] ~ /^URIs:/) { split(L[i], a, /[ \t]+/); u=a[2] }
                                if (L[i] ~ /^Suites:/ && L[i] ~ /[ \t]bookworm([ \t]|$)/) ok=1 }
           if (ok && u != "" && u !~ /security/) { print u; exit } }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  uri=$(sed -nE 's/\[[^]]*\]//; /^[[:space:]]*deb[[:space:]]/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$3=="bookworm" && $2 !~ /security/ {print $2; exit}')
  [ -n "$uri" ] && { echo "$uri"; return; }
  return 1
}

BASE=docker.io/library/debian:bookworm-slim
if ! "${PODMAN[@]}" image exists "$BASE"; then
  mkdir -p "$CACHE"
  tarball=$CACHE/debian-bookworm-minbase.tar
  if [ ! -s "$tarball" ]; then
    mirror=$(debian_mirror) || die "no Debian bookworm mirror found in /etc/apt"
    say "debootstrap bookworm (minbase) from $mirror; cached in $tarball"
    rootfs=$CACHE/rootfs.tmp
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  "${PODMAN[@]}" import -q --change 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null || die "podman import failed"
  "${PODMAN[@]}" tag "$BASE" docker.io/library/debian:bookworm >/dev/null
fi

# ---- build (docker format: OCI images drop HEALTHCHECK)
say "building $IMAGE"
t0=$(date +%s)
"${PODMAN[@]}" build --pull=never --network host --format docker -t "$IMAGE" "$PROJECT" >"$T/build.log" 2>&1 ||
  { tail -40 "$T/build.log" >&2; die "image build failed"; }
say "built in $(( $(date +%s) - t0 )) s"

base_size=$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$BASE")
image_size=$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$IMAGE")
added=$(( (image_size - base_size) / 1000000 ))
say "runtime image: $((image_size / 1000000)) MB, base $((base_size / 1000000)) MB, added $added MB"
[ "$added" -le 15 ] && ok || bad "the image adds $added MB to the base (limit 15 MB)"
user=$("${PODMAN[@]}" image inspect -f '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] && ok || bad "image runs as '$user', not a non-root user"

# ---- run with a named volume and a port on 127.0.0.1
port=""
for p in $(seq 27021 27121); do  # the first port nothing answers on
  if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || die "no free port in 27021-27121"
"${PODMAN[@]}" volume create "$VOLUME" >/dev/null
# podman's stderr goes to a log: without systemd it complains that it cannot schedule the
# periodic health checks, which this test runs itself with `podman healthcheck run`.
"${PODMAN[@]}" run -d --name "$NAME" -v "$VOLUME:/data" -p "127.0.0.1:$port:7021" "$IMAGE" >/dev/null 2>>"$T/podman.log" ||
  { cat "$T/podman.log" >&2; die "podman run failed"; }
export FTX_SERVER=127.0.0.1:$port
up=0
for _ in $(seq 100); do  # up to 10 s for the server to answer
  if "$FTX" ls >/dev/null 2>&1; then up=1; break; fi
  [ "$("${PODMAN[@]}" inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 0.1
done
[ $up = 1 ] || { "${PODMAN[@]}" logs "$NAME" >&2 || true; die "the container's server did not answer on $FTX_SERVER"; }
ok

# ---- put and get from the host
head -c 20000000 /dev/urandom >"$T/payload.bin"
want=$(sha256sum <"$T/payload.bin" | cut -d' ' -f1)
"$FTX" put "$T/payload.bin" "in/volume.bin" >/dev/null && ok || bad "put to the container"
"$FTX" get "in/volume.bin" "$T/back.bin" >/dev/null && ok || bad "get from the container"
[ "$(sha256sum <"$T/back.bin" | cut -d' ' -f1)" = "$want" ] && ok || bad "downloaded file differs"
"$FTX" ls | grep -q ' in/volume.bin$' && ok || bad "ls does not show the file"
mount=$("${PODMAN[@]}" volume inspect -f '{{.Mountpoint}}' "$VOLUME")
[ "$(sha256sum <"$mount/in/volume.bin" | cut -d' ' -f1)" = "$want" ] && ok || bad "the file is not in the volume"

# ---- health check: the image's HEALTHCHECK runs `ftx ping` inside the container
"${PODMAN[@]}" healthcheck run "$NAME" >/dev/null 2>&1 && ok || bad "health check failed"
health=$("${PODMAN[@]}" inspect -f '{{.State.Health.Status}}' "$NAME" 2>/dev/null || echo unknown)
[ "$health" = healthy ] && ok || bad "health status is '$health', not healthy"

# ---- stop: SIGTERM to PID 1 ends it promptly and cleanly
t0=$(date +%s%N)
"${PODMAN[@]}" stop -t 10 "$NAME" >/dev/null 2>>"$T/podman.log"
elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
code=$("${PODMAN[@]}" inspect -f '{{.State.ExitCode}}' "$NAME")
say "stopped in $elapsed_ms ms, exit code $code"
[ "$elapsed_ms" -lt 3000 ] && ok || bad "stop took $elapsed_ms ms (SIGTERM not handled?)"
[ "$code" = 0 ] && ok || bad "container exited with $code"
# The container's log goes through conmon into a file podman reads back; give that pipeline a
# few seconds rather than judge one read of it.
line='put "in/volume.bin" bytes=20000000'
found=0
for _ in $(seq 20); do
  logs_rc=0
  "${PODMAN[@]}" logs "$NAME" >"$T/server.log" 2>&1 || logs_rc=$?
  if grep -qF "$line" "$T/server.log"; then found=1; break; fi
  sleep 0.25
done
if [ $found = 1 ]; then
  ok
else
  bad "no transfer line in the logs (podman logs exited $logs_rc; what it printed, then the raw log file:)"
  tail -20 "$T/server.log" >&2
  log_path=$("${PODMAN[@]}" inspect -f '{{.HostConfig.LogConfig.Path}}' "$NAME" 2>/dev/null) && tail -20 "$log_path" >&2 || true
fi

# ---- the data outlives the container
"${PODMAN[@]}" rm "$NAME" >/dev/null 2>>"$T/podman.log"
"${PODMAN[@]}" run -d --name "$NAME" -v "$VOLUME:/data" -p "127.0.0.1:$port:7021" "$IMAGE" >/dev/null 2>>"$T/podman.log"
for _ in $(seq 100); do "$FTX" ls >/dev/null 2>&1 && break; sleep 0.1; done
"$FTX" get "in/volume.bin" "$T/again.bin" >/dev/null && cmp -s "$T/again.bin" "$T/payload.bin" && ok ||
  bad "the file did not survive a new container on the same volume"

echo "docker: $passed passed, $failed failed"
[ "$failed" = 0 ]
