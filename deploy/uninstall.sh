#!/usr/bin/env bash
# Remove what deploy/install.sh put in place. Keeps /etc/calyx and /var/lib/calyx unless --purge.
# The built-in pod network (its bridge, iptables and ip6tables chains) outlives the daemon's pods and goes
# with `calyx cleanup`, which refuses while pods use it: then nothing is uninstalled and the daemon keeps
# running, so that they can be removed (crictl rmp -a -f) before uninstalling again.
set -euo pipefail
state=/var/lib/calyx
# Containers outlive the daemon's stop (conmon keeps them): their root filesystems and image volumes are
# mounts under the state dir, and rm -rf would delete through them into the layers and volumes.
mounted_state() {
  local _ mountpoint
  while read -r _ _ _ _ mountpoint _; do
    case $mountpoint in "$state" | "$state"/*) echo "$mountpoint" ;; esac
  done </proc/self/mountinfo
}
refuse_purge() {
  echo "calyx: not purging $state: containers still use it (remove them first: crictl rmp -a -f):" >&2
  mounted_state | head -5 >&2
  exit 1
}
if [ "${1:-}" = --purge ] && [ -n "$(mounted_state)" ]; then refuse_purge; fi
cleanup() {
  [ -x /usr/local/bin/calyx ] || return 0
  /usr/local/bin/calyx cleanup || { echo "calyx not uninstalled: its built-in network is in use" >&2; exit 1; }
}
cleanup
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now calyx.service >/dev/null 2>&1 || true
fi
cleanup  # again: a pod may have come between the first cleanup and the daemon's stop
rm -f /etc/systemd/system/calyx.service /usr/local/bin/calyx
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
rm -rf /opt/calyx
if [ "${1:-}" = --purge ]; then
  if [ -n "$(mounted_state)" ]; then refuse_purge; fi  # a pod may have come before the daemon's stop
  rm -rf --one-file-system /etc/calyx "$state"
  [ "$(cat /etc/crictl.yaml 2>/dev/null)" = "$(cat "$(dirname "$0")/crictl.yaml")" ] && rm -f /etc/crictl.yaml
fi
echo "calyx uninstalled"
