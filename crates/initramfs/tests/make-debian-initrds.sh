#!/bin/sh
# Builds real Debian 12 initrds, one per compression mkinitramfs offers, for
# the inspector's comparison tests and the benchmark (scripts/bench-initrd).
#
# Usage: make-debian-initrds.sh [CACHE_DIR]   (default /var/cache/diskless/test-initrds)
#
# Output in CACHE_DIR:
#   debian-{gzip,xz,zstd,lz4,lzma,bzip2}.img  early intel + amd microcode cpios, then main
#   debian-gzip-nomicrocode.img               main archive only (unmkinitramfs' flat layout)
# Files already there are kept, so reruns are instant. Needs root, debootstrap
# (unless $DISKLESS_SEED_ROOT, default /var/tmp/probe-root, holds a bookworm
# tree with a kernel to copy) and access to the Debian archive.
set -eu

CACHE=${1:-/var/cache/diskless/test-initrds}
ROOT=$CACHE/root
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# A bookworm tree with a kernel to copy instead of debootstrapping (set empty
# to force debootstrap).
SEED=${DISKLESS_SEED_ROOT-/var/tmp/probe-root}
COMPRESSIONS="gzip xz zstd lz4 lzma bzip2"

mkdir -p "$CACHE"
# Several test threads may ask at once: one builds, the others wait.
exec 9>"$CACHE/.lock"
flock 9

wanted() {
	for c in $COMPRESSIONS; do
		[ -s "$CACHE/debian-$c.img" ] || return 0
	done
	[ -s "$CACHE/debian-gzip-nomicrocode.img" ] || return 0
	return 1
}
wanted || exit 0

if [ ! -e "$ROOT/.ready" ]; then
	rm -rf "$ROOT"
	if [ -n "$SEED" ] && [ -d "$SEED/lib/modules" ]; then
		cp -a "$SEED" "$ROOT"
	else
		debootstrap --variant=minbase \
			--include=linux-image-amd64,initramfs-tools,busybox,zstd \
			bookworm "$ROOT" "$MIRROR"
	fi
	cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
	echo "deb $MIRROR bookworm main non-free-firmware" >"$ROOT/etc/apt/sources.list"
	rm -f "$ROOT"/etc/apt/sources.list.d/*
	# Installing microcode triggers update-initramfs; we build our own below.
	mkdir -p "$ROOT/etc/initramfs-tools"
	echo "update_initramfs=no" >"$ROOT/etc/initramfs-tools/update-initramfs.conf"
	chroot "$ROOT" apt-get update -q
	DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -q --no-install-recommends \
		xz-utils lz4 bzip2 zstd intel-microcode amd64-microcode
	touch "$ROOT/.ready"
fi

KVER=$(find "$ROOT/lib/modules" -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -V | tail -n 1)

microcode() {
	# "yes" includes every microcode blob, whatever CPU the build host has.
	echo "IUCODE_TOOL_INITRAMFS=$1" >"$ROOT/etc/default/intel-microcode"
	echo "AMD64UCODE_INITRAMFS=$1" >"$ROOT/etc/default/amd64-microcode"
}

build() { # compression output-name
	[ -s "$CACHE/$2" ] && return 0
	echo "building $2 ($1, kernel $KVER)" >&2
	chroot "$ROOT" mkinitramfs -c "$1" -o "/tmp/$2" "$KVER"
	mv "$ROOT/tmp/$2" "$CACHE/$2.tmp"
	mv "$CACHE/$2.tmp" "$CACHE/$2"
}

microcode yes
for c in $COMPRESSIONS; do
	build "$c" "debian-$c.img"
done
microcode no
build gzip debian-gzip-nomicrocode.img
