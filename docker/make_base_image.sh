#!/usr/bin/env bash
# Make a stand-in for the CPU Dockerfile's default base image on a machine that cannot pull from
# a registry: debootstrap a minimal Debian bookworm with Debian's Python 3.11 (python3, venv,
# CA certificates) and `docker import` it under the tag BASE_IMAGE defaults to.
#
# Usage: docker/make_base_image.sh [TAG]        (default: python:3.11-slim-bookworm)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm),
#        ROOTFS (scratch folder, default a temp dir), FORCE=1 to rebuild an existing tag.
#
# Needs root, debootstrap and a running Docker engine. The result is not the official image
# (Python lives in /usr/bin, not /usr/local/bin), but the Dockerfiles only rely on `python3`,
# `python3 -m venv` and /bin/sh, which both provide.
set -euo pipefail

TAG="${1:-python:3.11-slim-bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "make_base_image: $TAG already exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "make_base_image: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }

ROOTFS="${ROOTFS:-$(mktemp -d /tmp/campseg-rootfs.XXXXXX)}"
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

start=$(date +%s)
echo "make_base_image: debootstrap $SUITE into $ROOTFS"
nice -n 10 debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log" >&2; exit 1; }
rm -f "$ROOTFS.log"

# Slim it down: package caches, lists, docs and man pages are not needed at run time.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old
echo "make_base_image: importing as $TAG"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE minbase + python3 (campseg stand-in for $TAG)" \
    - "$TAG"
echo "make_base_image: $TAG ready in $(( $(date +%s) - start )) s"
docker image ls "$TAG"
