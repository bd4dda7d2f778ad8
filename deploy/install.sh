#!/usr/bin/env bash
# Install Calyx and everything it runs with on Debian 12, as root. Idempotent.
#   deploy/install.sh          runtime packages, /opt/calyx/venv, /usr/local/bin/calyx, /etc/calyx
#   deploy/install.sh --dev    also the test dependencies, into the checkout's .venv (for tests/run.sh)
#   deploy/install.sh --node-lab   as --dev, and what tests/node/run.sh needs to build and boot its node
#   deploy/install.sh --print-packages    the Debian packages of the first two, one per line
#                                         (tests/node/build.sh puts them in the node)
# Offline: CALYX_WHEELS=DIR makes pip install from the wheels in DIR only (pip install --no-index
# --find-links DIR); DIR must hold Calyx's dependencies and build backend, e.g. from
#   pip wheel -w DIR '.[test]' hatchling grpcio-tools==1.81.1
# The Debian packages must then be installed already (apt is only called for missing ones).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
pip_from=()
if [ -n "${CALYX_WHEELS:-}" ]; then
  [ -d "$CALYX_WHEELS" ] || { echo "CALYX_WHEELS=$CALYX_WHEELS is not a directory" >&2; exit 1; }
  pip_from=(--no-index --find-links "$CALYX_WHEELS")
fi

# What the runtime needs on the node (apparmor: apparmor_parser loads Calyx's default container profile
# where AppArmor is on).
runtime_pkgs=(python3 python3-venv runc conmon catatonit containernetworking-plugins iptables iproute2
              util-linux procps apparmor)
# What the test suite needs besides: the test registry and its auth tools, the busybox the test images
# are built from, D-Bus and systemd for the systemd cgroup driver's tests, Prometheus for the exporter's.
# busybox-static and busybox conflict: the static one is installed, the dynamic one only unpacked (below).
dev_pkgs=(docker-registry apache2-utils busybox-static openssl dbus systemd prometheus iputils-ping
          golang-go golang-github-docker-spdystream-dev)  # the last two: a spdystream client (streaming tests)

# The node lab's host side: a Debian root file system (mmdebstrap), an initramfs (cpio), the kernel it
# boots and the VM; mke2fs, depmod and git ls-files for the image (tests/node/README.md).
node_lab_pkgs=(qemu-system-x86 qemu-utils mmdebstrap linux-image-amd64 cpio e2fsprogs kmod git)

if [ "$mode" = --print-packages ]; then
  printf '%s\n' "${runtime_pkgs[@]}" "${dev_pkgs[@]}"
  exit 0
fi
pkgs=("${runtime_pkgs[@]}")
case $mode in
  --dev) pkgs+=("${dev_pkgs[@]}") ;;
  --node-lab) pkgs+=("${dev_pkgs[@]}" "${node_lab_pkgs[@]}"); mode=--dev ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker-registry and prometheus packages start their services on install; tests start their own.
for svc in docker-registry prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

if [ "$mode" = --dev ]; then
  # critest's busybox image wants a dynamically linked busybox (see critest/images.py): unpack Debian's.
  dyn=/var/cache/calyx-test/busybox-dynamic
  if [ ! -x "$dyn/bin/busybox" ]; then
    mkdir -p /var/cache/calyx-test && (cd /var/cache/calyx-test && apt-get download -qq busybox >/dev/null)
    dpkg-deb -x /var/cache/calyx-test/busybox_*.deb "$dyn"
  fi
  venv=$here/.venv
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pip_from[@]}" -e "$here[test]"
  exit 0
fi

venv=/opt/calyx/venv
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${pip_from[@]}" "$here"
ln -sf "$venv/bin/calyx" /usr/local/bin/calyx
# /etc/calyx/calyx.toml (0600) and calyx.d (0700): they may hold registry passwords. An operator's edited
# config is never overwritten.
bash "$here/deploy/install-config.sh" /etc/calyx
[ -e /etc/crictl.yaml ] || install -m 0644 "$here/deploy/crictl.yaml" /etc/crictl.yaml
install -d /opt/calyx && install -m 0644 "$here/README.md" /opt/calyx/README.md
install -m 0644 "$here/deploy/calyx.service" /etc/systemd/system/calyx.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable calyx.service >/dev/null 2>&1
fi
