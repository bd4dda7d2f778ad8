#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, type check, then every test (as root, against the real
# kernel, runc, conmon, CNI plugins, registry, systemd and Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
"$venv/ruff" check .
"$venv/mypy" cri sandbox metrics bench critest
exec "$venv/pytest" -p no:cacheprovider "$@"
