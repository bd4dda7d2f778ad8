#!/usr/bin/env bash
# Install Calyx's default config into ETC (default /etc/calyx) and keep it root's alone: the config and its
# drop-ins may hold registry passwords. Idempotent; an operator's edited config is never overwritten, only
# its mode is tightened (calyx.toml and drop-ins 0600, calyx.d 0700).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
etc=${1:-/etc/calyx}

install -d -m 0755 "$etc"
install -d -m 0700 "$etc/calyx.d"
chmod 0700 "$etc/calyx.d"
[ -e "$etc/calyx.toml" ] || install -m 0600 "$here/calyx.toml" "$etc/calyx.toml"
chmod 0600 "$etc/calyx.toml"
find "$etc/calyx.d" -maxdepth 1 -type f -name '*.toml' -exec chmod go-rwx {} +
