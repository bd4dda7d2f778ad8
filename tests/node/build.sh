#!/usr/bin/env bash
# Build (or find in the cache) the node image: a Debian 12 root file system with systemd as PID 1,
# AppArmor, this checkout installed by deploy/install.sh (offline, from wheels built here), the test
# images in the node's own docker-registry. Prints the image's path and the kernel version to boot it
# with (/boot/vmlinuz-<version>); progress goes to stderr.
#
# Two cached stages under $CALYX_NODE_CACHE (default /var/cache/calyx-node):
#   base-<key>.tar   mmdebstrap of the packages; key: packages, deploy/install.sh's list, this script
#   node-<key>.img   ext4 image; key: the base, the kernel, the sources of the wheel and of the test
#                    images, deploy/ (tests and other files come in at each run, see run.sh)
# The kernel is the host's Debian 6.1 one (linux-image-amd64): its modules are copied in; run.sh boots
# its vmlinuz with node-<key>.initrd (busybox, virtio and ext4 modules).
#   wheels-<key>/    the dependencies' wheels (pip wheel); key: pyproject.toml
# Every temp dir and mount is gone when this script exits, however it exits.
set -euo pipefail
{  # the whole script is read before it runs: editing it cannot change a run under way
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${CALYX_NODE_CACHE:-/var/cache/calyx-node}
suite=bookworm
keep=2  # images (and base tars) kept in the cache: the newest ones

log() { printf '[node build] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- inputs ---------------------------------------------------------------------------------------------
kernel_version() {
  if [ -n "${CALYX_NODE_KERNEL:-}" ]; then echo "$CALYX_NODE_KERNEL"; return; fi
  local v
  v=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -1)
  [ -n "$v" ] || die "no Debian kernel in /boot: apt-get install linux-image-amd64"
  echo "$v"
}
kver=$(kernel_version)
[ -d "/lib/modules/$kver" ] || die "/lib/modules/$kver is missing (apt-get install linux-image-$kver)"

packages() {
  { grep -v '^\s*#' "$here/packages"; bash "$repo/deploy/install.sh" --print-packages; } |
    tr -d ' \t' | grep -v '^$' | sort -u | paste -sd, -
}
# The checkout's files (tracked and new, as in the working tree) under the given paths, NUL-separated.
checkout_files() { git -C "$repo" ls-files -z --cached --others --exclude-standard -- "$@" |
  while IFS= read -r -d '' f; do [ -f "$repo/$f" ] && printf '%s\0' "$f"; done; }
hash_files() { (cd "$repo" && checkout_files "$@" | sort -z | xargs -0r sha256sum) | sha256sum | cut -c1-16; }

pkgs=$(packages)
# Stage 1's recipe: its key is this text and the package list, so that editing the rest of this script
# does not fetch Debian again. Hooks run in mmdebstrap's own namespaces (unshare mode): nothing is
# mounted on the host. No docs, man pages or translations; no Prometheus web UI time zones (223 MB,
# unused by the tests). Debian's dynamically linked busybox is unpacked where install.sh --dev puts it.
base_recipe=(
  --mode=unshare --variant=minbase
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/javascript/moment-timezone/*'
  --customize-hook='chroot "$1" sh -ec "cd /tmp && apt-get -qq -o APT::Sandbox::User=root download busybox &&
    mkdir -p /var/cache/calyx-test && dpkg-deb -x busybox_*.deb /var/cache/calyx-test/busybox-dynamic &&
    rm busybox_*.deb"'
)
base_key=$(printf '%s\n' "$suite" "$pkgs" "${base_recipe[@]}" | sha256sum | cut -c1-16)
# The wheel is built from its packages (pyproject.toml names them), the proto and the build hook;
# critest/ makes the test images; deploy/ is installed as is.
wheel_packages=$(python3 -c 'import sys, tomllib; t = tomllib.load(open(sys.argv[1], "rb"))
print(" ".join(t["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]))' "$repo/pyproject.toml")
# shellcheck disable=SC2086 # a list of package dirs
src_key=$(hash_files $wheel_packages proto pyproject.toml hatch_build.py critest deploy)
kernel_key="$kver $(stat -c '%s %Y' "/boot/vmlinuz-$kver")"
node_key=$(printf '%s\n' "$base_key" "$kernel_key" "$src_key" "$(sha256sum <"$0")" | sha256sum | cut -c1-16)
base_tar=$cache/base-$base_key.tar
image=$cache/node-$node_key.img

if [ -f "$image" ]; then
  log "cached: $image"
  echo "$image $kver"
  exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # one build at a time; a second caller waits and then finds the image
if [ -f "$image" ]; then echo "$image $kver"; exit 0; fi

work=$(mktemp -d "$cache/build.XXXXXX")
registry_pid=
cleanup() {
  set +e
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start=$SECONDS

# --- stage 1: the Debian root file system -----------------------------------------------------------------
if [ ! -f "$base_tar" ]; then
  log "mmdebstrap $suite (base $base_key): $(tr ',' ' ' <<<"$pkgs")"
  t0=$SECONDS
  mmdebstrap "${base_recipe[@]}" --include="$pkgs" \
    "$suite" "$work/base.tar" >&2 2> >(grep -v '^I: ' >&2)
  mv "$work/base.tar" "$base_tar"
  log "base built in $((SECONDS - t0)) s ($(du -m "$base_tar" | cut -f1) MB)"
fi

# --- stage 2: the node ----------------------------------------------------------------------------------------
root=$work/root
mkdir "$root"
t0=$SECONDS
tar -xpf "$base_tar" -C "$root" --numeric-owner --xattrs --xattrs-include='*'

log "kernel modules of $kver"
mkdir -p "$root/lib/modules"
# Everything but hardware a VM never has (GPUs, sound, media, wireless, InfiniBand...).
tar -C /lib/modules -cf - --exclude="$kver/kernel/drivers/gpu" --exclude="$kver/kernel/sound" \
    --exclude="$kver/kernel/drivers/media" --exclude="$kver/kernel/drivers/net/wireless" \
    --exclude="$kver/kernel/drivers/infiniband" --exclude="$kver/kernel/drivers/staging" \
    --exclude="$kver/kernel/drivers/bluetooth" --exclude="$kver/kernel/drivers/iio" \
    --exclude="$kver/kernel/drivers/hid" --exclude="$kver/kernel/drivers/usb" "$kver" |
  tar -C "$root/lib/modules" -xf -
depmod -b "$root" "$kver"

wheels=$cache/wheels-$(sha256sum <"$repo/pyproject.toml" | cut -c1-16)
if [ ! -d "$wheels" ]; then
  log "wheels of the dependencies and the build backend (pip wheel)"
  t1=$SECONDS
  pip=$repo/.venv/bin/pip
  [ -x "$pip" ] || pip="python3 -m pip"
  # hatchling, editables and grpcio-tools: the build backend of install.sh's installs from the checkout.
  $pip wheel -q --disable-pip-version-check -w "$work/wheels" "$repo[test]" hatchling editables \
    'grpcio-tools==1.81.1' 2> >(grep -v "^WARNING: Location .* is ignored" >&2) >&2
  rm -f "$work"/wheels/calyx-*.whl  # install.sh builds Calyx from the checkout itself
  mv "$work/wheels" "$wheels"
  log "wheels in $((SECONDS - t1)) s ($(du -sm "$wheels" | cut -f1) MB)"
fi

log "checkout into /srv/calyx"
mkdir -p "$root/srv/calyx"
(cd "$repo" && checkout_files . | grep -zv '^cri/api/api_pb2' | tar -cf - --null -T -) | tar -C "$root/srv/calyx" -xf -
cp -r "$wheels" "$root/tmp/wheels"

# The node's settings: what an operator of such a node writes (config drop-ins), and what makes the
# boot short (no serial getty waiting 90 s for a console device, no timers, a fixed machine id).
cat >"$root/etc/hostname" <<<"calyx-node"
printf '127.0.0.1 localhost\n127.0.1.1 calyx-node\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
tr -d - </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
install -d "$root/etc/calyx/calyx.d"
printf '# The node runs kubelet-style: cgroups through systemd.\n[cgroup]\ndriver = "systemd"\n' \
  >"$root/etc/calyx/calyx.d/10-node.toml"
# The node's registry serves the test images on loopback, without Debian's default htpasswd auth.
cat >"$root/etc/docker/registry/config.yml" <<'EOF'
version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
http:
  addr: 127.0.0.1:5000
EOF
install -d "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStartSec=300s\nDefaultTimeoutStopSec=30s\n' \
  >"$root/etc/systemd/system.conf.d/10-node.conf"

# The job runner: run.sh hands a tar on the second disk (/dev/vdb); this unpacks it and runs the
# checkout's tests/node/guest.sh, which runs the command and powers the node off.
cat >"$root/usr/local/sbin/calyx-node-job" <<'EOF'
#!/bin/bash
# Unpack the job disk (a tar from tests/node/run.sh) and hand over to the checkout's guest.sh.
out=/dev/virtio-ports/org.calyx.out
status=/dev/virtio-ports/org.calyx.status
fail() { echo "calyx-node-job: $*" >"$out"; echo 125 >"$status"; systemctl poweroff -ff; exit 1; }
# Without udev (a minbase node has none) nothing loads the virtio-serial driver or names its ports.
modprobe virtio_console
for _ in $(seq 100); do
  for port in /sys/class/virtio-ports/*; do
    [ -e "$port/name" ] || continue
    mkdir -p /dev/virtio-ports && ln -sf "../$(basename "$port")" "/dev/virtio-ports/$(cat "$port/name")"
  done
  [ -e "$status" ] && break
  sleep 0.1
done
mkdir -p /srv/job && tar -xf /dev/vdb -C /srv/job || fail "cannot unpack the job disk"
# The image's checkout keeps its .venv and generated stubs; the job's files replace the rest (renames,
# not copies: the old tree is left aside on this throwaway disk).
new=/srv/job/checkout
mv /srv/calyx/.venv "$new/.venv" && cp -a /srv/calyx-stubs/. "$new/cri/api/" &&
  mv /srv/calyx /srv/calyx.image && mv "$new" /srv/calyx || fail "cannot put the checkout in place"
cd /srv/calyx || fail "no /srv/calyx"
exec /bin/bash /srv/calyx/tests/node/guest.sh
EOF
chmod 0755 "$root/usr/local/sbin/calyx-node-job"
cat >"$root/etc/systemd/system/calyx-node-job.service" <<'EOF'
[Unit]
Description=Run the job tests/node/run.sh brought in, then power off
After=calyx.service docker-registry.service apparmor.service
Wants=calyx.service docker-registry.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/calyx-node-job
StandardInput=null
StandardOutput=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF

log "install.sh and install.sh --dev in the node (offline, from the wheels)"
t1=$SECONDS
cat >"$root/tmp/install-in-node.sh" <<'EOF'
set -euo pipefail
export CALYX_WHEELS=/tmp/wheels HOME=/root
bash /srv/calyx/deploy/install.sh
bash /srv/calyx/deploy/install.sh --dev
# The generated stubs (compiled: api_pb2 is large) stay with the .venv; the rest of the checkout comes
# with each run (run.sh).
/srv/calyx/.venv/bin/python -m compileall -q /srv/calyx/cri/api >/dev/null
install -d /srv/calyx-stubs && cp -a /srv/calyx/cri/api/api_pb2* /srv/calyx/cri/api/__pycache__ /srv/calyx-stubs/
systemctl enable calyx.service calyx-node-job.service docker-registry.service
systemctl disable prometheus.service 2>/dev/null || true
# No consoles to log in on (a serial getty waits 90 s for its device); no timers; nothing a node of
# tests never uses (binfmt, debug and FUSE file systems, a persistent journal to flush).
systemctl mask serial-getty@ttyS0.service getty@tty1.service systemd-networkd-wait-online.service \
  apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer logrotate.timer \
  dpkg-db-backup.timer systemd-binfmt.service proc-sys-fs-binfmt_misc.automount sys-kernel-debug.mount \
  sys-kernel-tracing.mount sys-fs-fuse-connections.mount systemd-journal-flush.service >/dev/null 2>&1 || true
EOF
# A private mount namespace: /proc, /sys and /dev for the chroot vanish with it.
unshare --mount --propagation private sh -ec '
  root=$1
  mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"; mount --rbind /dev "$root/dev"
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" /bin/bash /tmp/install-in-node.sh' sh "$root" >&2
log "installed in $((SECONDS - t1)) s"

log "test images into the node's registry (python -m critest.images push)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$port" >"$root/tmp/registry.yml"
chroot "$root" /usr/bin/docker-registry serve /tmp/registry.yml >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null && break
  sleep 0.1
done
(cd "$repo" && PYTHONPATH=$repo "$repo/.venv/bin/python" -m critest.images push --registry "127.0.0.1:$port") >&2
kill "$registry_pid"; wait "$registry_pid" 2>/dev/null || true
registry_pid=
chroot "$root" sh -c 'chown -R docker-registry: /var/lib/docker-registry'
chroot "$root" sh -c "cd /srv/calyx && .venv/bin/python -m critest.images mirror-config --registry 127.0.0.1:5000" \
  >"$root/etc/calyx/calyx.d/50-mirrors.toml"
rm -rf "$root/tmp/"* "$root/var/cache/apt/"*.bin

log "initramfs: busybox, virtio and ext4 modules"
# Debian's own initrd (31 MB, udev) takes ~14 s of a TCG boot to unpack and probe; the node needs only
# its virtio disk and ext4, loaded by a few lines of busybox sh.
initramfs=$work/initramfs
mkdir -p "$initramfs"/{bin,dev,proc,sys,root,lib/modules}
cp /bin/busybox "$initramfs/bin/busybox"
for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe -S "$kver" --show-depends "$m"; done |
  awk '$1 == "insmod" && !seen[$2]++ {print $2}' >"$work/modules"
while read -r ko; do cp "$ko" "$initramfs/lib/modules/"; echo "/lib/modules/$(basename "$ko")"; done \
  <"$work/modules" >"$initramfs/modules"
cat >"$initramfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
while read -r ko; do insmod "$ko"; done </modules
for _ in $(seq 300); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /root || { echo "initramfs: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
EOF
chmod 0755 "$initramfs/init"
(cd "$initramfs" && find . | cpio -o -H newc --quiet) >"$work/node.initrd"

log "ext4 image"
size_mb=$(( $(du -sm "$root" | cut -f1) + 4096 ))  # room for the tests' pods, layers and logs
mke2fs -q -t ext4 -L calyx-node -d "$root" -F "$work/node.img" "${size_mb}M" >&2
mv "$work/node.initrd" "${image%.img}.initrd"
mv "$work/node.img" "$image"
log "node image built in $((SECONDS - t0)) s (stage 2), $((SECONDS - start)) s in all: $image"

# Keep the newest few of each stage.
for old in $(ls -t "$cache"/node-*.img 2>/dev/null | tail -n +$((keep + 1))); do rm -f "$old" "${old%.img}.initrd"; done
ls -t "$cache"/base-*.tar 2>/dev/null | tail -n +$((keep + 1)) | xargs -r rm -f
ls -td "$cache"/wheels-* 2>/dev/null | tail -n +$((keep + 1)) | xargs -r rm -rf
echo "$image $kver"
}
