"""Upstream critest against the node's Calyx, offline; run inside the node by guest.sh.

    python -m tests.node.critest [CRITEST FLAGS...]      e.g. --ginkgo.focus='AppArmor|cgroup'

Calyx is the one deploy/calyx.service runs (the systemd cgroup driver); the images come from the node's
docker-registry through the mirror drop-in build.sh wrote. Streams critest's output, then prints its own
summary line and which failures critest/expected-failures.md expects. Exit status as ``python -m
critest.run``: 0 when critest passed or every failure is an expected one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from critest.run import expected_failures, parse_summary, unexpected

ENDPOINT = "unix:///run/calyx/calyx.sock"
# Under TCG every CRI call is 30-70x slower than on a host: the whole suite takes most of an hour, more
# than ginkgo's default 1 h suite timeout leaves. critest's per-call timeout (--runtime-service-timeout,
# --image-service-timeout) is 300 s by default, which fits.
SUITE_TIMEOUT = "3h"


def main(argv: list[str]) -> int:
    binary = shutil.which("critest")
    if binary is None:
        print("critest: no critest binary in the node (tests/node/run.sh copies $CRITEST in)", flush=True)
        return 2
    command = [
        binary,
        f"--runtime-endpoint={ENDPOINT}",
        f"--image-endpoint={ENDPOINT}",
        "--ginkgo.no-color",
        f"--ginkgo.timeout={SUITE_TIMEOUT}",
        *argv,
    ]
    print("running:", " ".join(command), flush=True)
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            print(line, end="", flush=True)
    summary = parse_summary("".join(lines))
    surprises = unexpected(summary, expected_failures())
    print("\n== critest summary (in the node) ==")
    print(summary.ran or "(no 'Ran N of M Specs' line)")
    print(summary.result or f"(no result line; critest exited {proc.returncode})")
    for failure in summary.failures:
        print(("  FAILED:   " if failure in surprises else "  expected: ") + failure)
    if proc.returncode == 0 or (summary.failures and not surprises):
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
