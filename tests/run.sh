#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, type check, import layers, every test (as root, against the real kernel,
# runc, conmon, CNI plugins, registry, systemd and Prometheus), then upstream critest against Calyx
# (critest/run.py; it prints critest's own summary), then in CI the node lab's subset (below). Arguments
# select pytest tests and skip critest and the node lab.
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
# The node lab's CI subset (tests/node/README.md): a Debian 12 node under qemu, cgroup v2, systemd, AppArmor.
# Part of the whole suite, as the README's test command runs it; CALYX_NODE_LAB=off leaves it out (e.g.
# while iterating on a host). Otherwise nothing skips it: no qemu is a failure (bash deploy/install.sh
# --node-lab installs what it needs).
node_lab=${CALYX_NODE_LAB:-subset}
if [ $# -eq 0 ] && [ "$node_lab" = subset ]; then
    if command -v qemu-system-x86_64 >/dev/null; then
        # The subset takes 5-6 min of node time under TCG; a node that overstays is stopped and fails
        # the run, with what hung (tests/node/guest.sh), instead of holding CI until its own timeout.
        CALYX_NODE_TIMEOUT=${CALYX_NODE_TIMEOUT:-1200} tests/node/run.sh subset || status=$?
    else
        echo "node lab: qemu-system-x86_64 is missing (bash deploy/install.sh --node-lab)" >&2
        status=1
    fi
fi
exit "$status"
