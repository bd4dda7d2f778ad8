#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, type check, import layers, every test (as root, against the real kernel,
# runc, conmon, CNI plugins, registry, systemd and Prometheus), then upstream critest against Calyx
# (critest/run.py; it prints critest's own summary). Arguments select pytest tests and skip critest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv/bin
"$venv/ruff" check .
"$venv/mypy" calyx_base cri sandbox metrics bench critest
"$venv/lint-imports" --no-cache  # the import layers: [tool.importlinter] in pyproject.toml
status=0
"$venv/pytest" -p no:cacheprovider "$@" || status=$?
if [ $# -eq 0 ]; then
    "$venv/python" -m critest.run || status=$?
fi
exit "$status"
