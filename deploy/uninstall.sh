#!/usr/bin/env bash
# Remove what deploy/install.sh put in place. Keeps /etc/calyx and /var/lib/calyx unless --purge.
set -euo pipefail
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now calyx.service >/dev/null 2>&1 || true
fi
rm -f /etc/systemd/system/calyx.service /usr/local/bin/calyx
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
rm -rf /opt/calyx
if [ "${1:-}" = --purge ]; then
  rm -rf /etc/calyx /var/lib/calyx
  [ "$(cat /etc/crictl.yaml 2>/dev/null)" = "$(cat "$(dirname "$0")/crictl.yaml")" ] && rm -f /etc/crictl.yaml
fi
echo "calyx uninstalled"
