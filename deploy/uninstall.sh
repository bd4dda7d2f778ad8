#!/usr/bin/env bash
# Remove what deploy/install.sh put in place. Keeps /etc/calyx and /var/lib/calyx unless --purge.
# The built-in pod network (its bridge, iptables and ip6tables chains) outlives the daemon's pods and goes
# with `calyx cleanup`, which refuses while pods use it: then nothing is uninstalled and the daemon keeps
# running, so that they can be removed (crictl rmp -a -f) before uninstalling again.
set -euo pipefail
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
  rm -rf /etc/calyx /var/lib/calyx
  [ "$(cat /etc/crictl.yaml 2>/dev/null)" = "$(cat "$(dirname "$0")/crictl.yaml")" ] && rm -f /etc/crictl.yaml
fi
echo "calyx uninstalled"
