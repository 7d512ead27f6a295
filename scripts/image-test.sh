#!/usr/bin/env bash
# `make image-test`: build the Dockerfile's three images (server, trainer, ray) with podman on a local Debian base,
# then run them as a user would (tests/test_images.py) and docker-compose.yml's vocoder service (podman-compose).
# In CI (CI=true) a host where podman cannot run fails; anywhere else it skips with one line saying why.
#
# Registry images cannot be pulled here, so the base is built: Debian bookworm by debootstrap, a venv on PATH
# (bookworm's own Python refuses pip, PEP 668) and torch from the CPU wheel pip finds on this machine's disk, then
# passed to the Dockerfile as BASE_IMAGE. Everything podman keeps (config, storage, volumes) lives in $STATE; the
# settings this VM needs are written there, not into /etc:
#   default_ulimits = []         the VM refuses to raise RLIMIT_NOFILE / RLIMIT_NPROC
#   runtime = runc               crun refuses the host's hybrid cgroups
#   cgroup_manager = cgroupfs    no systemd
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
STATE=${IMAGE_TEST_STATE:-$ROOT/.images}
DRIVER=${IMAGE_TEST_DRIVER:-overlay}  # overlay (the kernel's) | fuse-overlayfs | vfs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/bddm-vocoder-base:bookworm
SERVER=localhost/bddm-vocoder:local  # docker-compose.yml's image names, so compose finds them
TRAINER=localhost/bddm-vocoder-train:local
RAY=localhost/bddm-vocoder-ray:local

give_up() {  # a host that cannot run podman: CI fails, a developer's machine skips
  if [ "${CI:-}" = true ]; then echo "image-test: FAILED: $1" >&2; exit 1; fi
  echo "image-test: skipped: $1"; exit 0
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# --- podman, runc and debootstrap from Debian (podman-compose comes from PyPI, in the test extra) ------------------
packages=(podman runc debootstrap iptables)  # iptables: netavark's port forwarding
[ "$DRIVER" = fuse-overlayfs ] && packages+=(fuse-overlayfs)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || give_up "podman is not installed and this is not a Debian host (apt-get)"
  if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    give_up "installing ${missing[*]} needs root"; fi
  echo "image-test: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || give_up "apt-get could not install ${missing[*]}"
fi
[ "$(id -u)" = 0 ] || give_up "the image test runs podman as root (debootstrap, kernel overlay); run it as root"

# --- the private config -----------------------------------------------------------------------------------------
mkdir -p "$STATE"/{storage,run,tmp,networks}
cat >"$STATE/containers.conf" <<EOF
[containers]
default_ulimits = []
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$STATE/tmp/events.log"
tmp_dir = "$STATE/tmp"

[network]
network_config_dir = "$STATE/networks"
EOF
cat >"$STATE/storage.conf" <<EOF
[storage]
driver = "${DRIVER/fuse-overlayfs/overlay}"
graphroot = "$STATE/storage"
runroot = "$STATE/run"
$([ "$DRIVER" = fuse-overlayfs ] && printf '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"')
EOF
export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf
podman info >"$STATE/tmp/info.log" 2>&1 || give_up "podman cannot run here: $(tail -1 "$STATE/tmp/info.log")"

# Leave nothing running, whatever happens: the tests remove their own containers, this catches the rest.
cleanup() { podman rm -f -a -t 0 >/dev/null 2>&1 || true; }
trap cleanup EXIT

# --- the base ---------------------------------------------------------------------------------------------------
torch=$("$PY" -c 'import re, tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"];
print(next(re.split(r"==", t)[1].strip() for t in d if re.match(r"torch\s*==", t)))')
t0=$(now)
if ! podman image exists "$BASE"; then
  # The CPU wheel, from wherever pip finds it without an index (find-links, a local index): never PyPI's CUDA build.
  rm -rf "$STATE/wheels" && mkdir -p "$STATE/wheels"
  "$PY" -m pip download --quiet --no-deps --no-index --only-binary=:all: -d "$STATE/wheels" "torch==$torch" \
    || give_up "no local torch==$torch wheel for pip to find (pip config: find-links)"
  wheel=$(cd "$STATE/wheels" && ls torch-*.whl)
  case $wheel in *+cpu*) ;; *) give_up "the local torch wheel $wheel is not the CPU build" ;; esac

  rootfs=$STATE/rootfs
  rm -rf "$rootfs"
  echo "image-test: debootstrap bookworm"
  # python3-dev: pesq builds from source in the Dockerfile's pip install (the pytorch image has Python's headers).
  timeout 900 nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$STATE/tmp/debootstrap.log" 2>&1 \
    || { tail -5 "$STATE/tmp/debootstrap.log" >&2; exit 1; }
  # The host's trust store, so that pip in the builds gets through whatever TLS proxy the host's pip goes through.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$rootfs" -c . | podman import --quiet - localhost/debian:bookworm-debootstrap >/dev/null
  rm -rf "$rootfs"
  mkdir -p "$STATE/tmp/empty"
  timeout 900 nice -n 10 podman build --quiet --format docker -v "$STATE/wheels:/wheels:ro" -t "$BASE" -f - \
    "$STATE/tmp/empty" >"$STATE/tmp/build-base.log" 2>&1 <<EOF || { tail -20 "$STATE/tmp/build-base.log" >&2; exit 1; }
FROM localhost/debian:bookworm-debootstrap
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:\$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN pip install --no-cache-dir /wheels/$wheel
EOF
  podman rmi localhost/debian:bookworm-debootstrap >/dev/null
fi
echo "image-test: base $BASE ($(since "$t0") s)"

# --- the three targets ------------------------------------------------------------------------------------------
report=$STATE/report.txt
printf '%-8s %10s %8s\n' image size build >"$report"
for pair in "server $SERVER" "trainer $TRAINER" "ray $RAY"; do
  read -r target tag <<<"$pair"
  t0=$(now)
  timeout 1200 nice -n 10 podman build --format docker --build-arg "BASE_IMAGE=$BASE" --target "$target" -t "$tag" . \
    >"$STATE/tmp/build-$target.log" 2>&1 || { tail -20 "$STATE/tmp/build-$target.log" >&2; exit 1; }
  size=$(podman image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.2f GB", $1 / 1e9 }')
  printf '%-8s %10s %6s s\n' "$target" "$size" "$(since "$t0")" | tee -a "$report"
done

# --- run them ---------------------------------------------------------------------------------------------------
export IMAGE_TEST_SERVER=$SERVER IMAGE_TEST_TRAINER=$TRAINER IMAGE_TEST_RAY=$RAY IMAGE_TEST_TIMINGS=$STATE/timings.txt
: >"$IMAGE_TEST_TIMINGS"
status=0
timeout 1800 "$PY" -m pytest tests/test_images.py -p no:cacheprovider -q || status=$?
echo "image-test: images (build times include the base stage only for the first; the others reuse its layers)"
cat "$report"
echo "image-test: start times (podman run -> first passing healthcheck or answer)"
cat "$IMAGE_TEST_TIMINGS"
echo "image-test: storage $(du -sh "$STATE" | cut -f1) in $STATE ($DRIVER)"
# CI's clone is thrown away: give the disk back (elsewhere the base and the layers stay, for the next run).
if [ "${CI:-}" = true ]; then podman system reset --force >/dev/null 2>&1 || true; rm -rf "$STATE"; fi
exit $status
