#!/usr/bin/env bash
# Build MEG's default container base image from Debian packages, for machines that cannot reach a
# container registry (air-gapped labs, networks that block Docker Hub). On a normal machine nobody needs
# this: `docker compose build` pulls python:3.11-slim.
#
# What it does:
#   1. debootstrap a minimal Debian bookworm (Python 3.11 + venv + CA certificates) into a temp folder;
#   2. if the host has extra CA certificates (/usr/local/share/ca-certificates/*.crt, e.g. a TLS-intercepting
#      proxy's), copy them in and run update-ca-certificates, so pip inside image builds trusts them;
#   3. `docker import` it under the name the Dockerfile expects (default python:3.11-slim);
#   4. if docker/wheels/ has no torch wheel and the host's pip can hand one out WITHOUT the network (a local
#      find-links folder), copy it there, so the image build needs no download.pytorch.org either.
#
# Usage: scripts/build-base-image.sh [--tag NAME] [--force] [--no-wheels]
#   --tag NAME    image name (default python:3.11-slim = docker/Dockerfile's BASE_IMAGE default)
#   --force       rebuild even if NAME already exists locally
#   --no-wheels   skip step 4
# Env: MEG_DEBIAN_MIRROR (default http://deb.debian.org/debian), MEG_DEBIAN_SUITE (default bookworm),
#      MEG_TORCH_SPEC (default torch==2.13.0, for step 4).
# Needs: root (debootstrap), the debootstrap package, a running Docker engine.
set -euo pipefail

tag="python:3.11-slim"
force=0
wheels=1
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --no-wheels) wheels=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build-base-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
mirror=${MEG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${MEG_DEBIAN_SUITE:-bookworm}
torch_spec=${MEG_TORCH_SPEC:-torch==2.13.0}
repo=$(cd "$(dirname "$0")/.." && pwd)

seed_wheels() {
  [ "$wheels" = 1 ] || return 0
  local dir="$repo/docker/wheels"
  if ls "$dir"/torch-*.whl >/dev/null 2>&1; then
    echo "build-base-image: docker/wheels/ already has $(basename "$(ls "$dir"/torch-*.whl | head -1)")"
    return 0
  fi
  local pip=""
  for candidate in pip3 pip; do command -v "$candidate" >/dev/null && pip=$candidate && break; done
  [ -n "$pip" ] || return 0
  # --no-index: only the host's local find-links folders (pip config), never the network.
  if "$pip" download --no-index --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
       -d "$dir" "$torch_spec" >/dev/null 2>&1 && ls "$dir"/torch-*.whl >/dev/null 2>&1; then
    echo "build-base-image: copied $(basename "$(ls "$dir"/torch-*.whl | head -1)" ) from the host's pip into docker/wheels/"
  else
    echo "build-base-image: no local torch wheel on this host; the image build installs torch from its index"
  fi
}

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "build-base-image: $tag already exists (use --force to rebuild)"
  seed_wheels
  exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "build-base-image: debootstrap needs root" >&2; exit 1; fi
if ! command -v debootstrap >/dev/null; then
  echo "build-base-image: needs debootstrap (apt-get install -y debootstrap)" >&2; exit 1
fi
docker info >/dev/null 2>&1 || { echo "build-base-image: no Docker engine reachable (is dockerd running?)" >&2; exit 1; }

work=$(mktemp -d /tmp/meg-base.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root="$work/rootfs"
start=$(date +%s)
echo "build-base-image: debootstrap $suite from $mirror (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

# the security and updates suites, so `apt-get install` inside derived images gets fixes
if [ "$suite" = bookworm ]; then
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
fi

extra=0
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  extra=$(ls /usr/local/share/ca-certificates/*.crt | wc -l)
fi
chroot "$root" update-ca-certificates >/dev/null 2>&1 || { echo "build-base-image: update-ca-certificates failed" >&2; exit 1; }

# slim it: package caches, docs, man pages, non-English locales
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.opencontainers.image.description=\"Debian $suite + python3 built offline by MEG scripts/build-base-image.sh ($extra extra CA certs)\"" \
  - "$tag" >/dev/null
echo "build-base-image: $tag built in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'), Python $(docker run --rm "$tag" python3 -c 'import sys; print(sys.version.split()[0])'), $extra extra CA certificate(s))"
seed_wheels
