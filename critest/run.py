"""Run upstream critest (cri-tools' CRI validation suite) against Calyx, offline.

    python -m critest.run [--critest PATH] [--focus REGEX] [--skip REGEX] [--keep] [--verbose]

critest is taken from ``--critest``, ``$CRITEST``, PATH or ../shared/tools/critest (it is not a Debian
package: users get it from a cri-tools release). The run happens in an environment of its own
(critest/harness.py: a loopback registry with the test images, Calyx with a mirror drop-in and a
bridge of its own) that is removed however the run ends. critest's own summary is printed ("Ran N of M
Specs ...", "P Passed | F Failed | ..."), with its failures marked expected (critest/expected-failures.md)
or not.

Exit status 0 when every failure is expected and, in a full run, at least the floor recorded in
expected-failures.md passed (a group of specs that silently stops running lowers the count); 1
otherwise, also when critest dies without a summary or Calyx leaves something on the host. Without a
critest binary: 1 under CI=true, else 0 with a message.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from critest.tools import find_tool, in_ci, where_looked

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected-failures.md"
CRITEST_TIMEOUT_S = 10 * 60  # ginkgo's own bound on the whole run, ten times a run on a host (45-65 s)
STOP_GRACE_S = 45  # ginkgo gives a spec 30 s of cleanup after an interrupt
FAILURE = re.compile(r"^\[(FAIL|PANICKED!|TIMEDOUT|INTERRUPTED)\]")


@dataclass
class Summary:
    ran: str = ""  # "Ran 108 of 122 Specs in 75.2 seconds"
    result: str = ""  # "FAIL! -- 107 Passed | 1 Failed | 0 Pending | 14 Skipped"
    counts: dict[str, int] = field(default_factory=dict)  # {"Passed": 107, "Failed": 1, ...}
    failures: list[str] = field(default_factory=list)


def expected_failures(path: Path = EXPECTED) -> list[str]:
    """Spec names of the "## Expected failures" section: the `backquoted` start of each ``- `` line."""
    names = []
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip().lower()
            continue
        match = re.match(r"\s*-\s+`([^`]+)`", line)
        if match and section == "expected failures":
            names.append(match.group(1))
    return names


def passed_floor(path: Path = EXPECTED) -> int:
    """The fewest specs a full run may pass: "passes at least `N` specs" in expected-failures.md."""
    match = re.search(r"passes at least `(\d+)` specs", path.read_text())
    if match is None:
        raise SystemExit(f"{path} records no floor ('passes at least `N` specs')")
    return int(match.group(1))


def parse_summary(output: str) -> Summary:
    """Ginkgo's closing lines: "Ran N of M Specs ...", "SUCCESS!/FAIL! -- ...", and the failed specs."""
    summary = Summary()
    for line in output.splitlines():
        text = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if text.startswith("Ran ") and " Specs" in text:
            summary.ran = text
        elif text.startswith(("SUCCESS!", "FAIL!")):
            summary.result = text
            summary.counts = {word: int(n) for n, word in re.findall(r"(\d+) ([A-Z][a-z]+)", text)}
        elif FAILURE.match(text) and text not in summary.failures:
            summary.failures.append(text)
    return summary


def unexpected(summary: Summary, expected: list[str]) -> list[str]:
    return [f for f in summary.failures if not any(name in f for name in expected)]


def verdict(
    summary: Summary,
    code: int | None,
    expected: list[str],
    floor: int | None,
    leftovers: list[str],
    calyx_status: int | None = None,
) -> list[str]:
    """Why the run fails (empty: it passed). ``floor`` is None for a partial (focused) run;
    ``calyx_status`` is Calyx's exit status if it died during the run."""
    problems: list[str] = []
    if calyx_status is not None:
        problems.append(f"calyx died during the run (status {calyx_status})")
    if not summary.result:
        problems.append(f"critest ended (status {code}) without its summary")
    problems += [f"unexpected failure: {f}" for f in unexpected(summary, expected)]
    if code not in (0, None) and summary.result and not summary.failures:
        problems.append(f"critest exited {code} with no failed spec listed")
    passed = summary.counts.get("Passed", 0)
    if floor is not None and summary.result and passed < floor:
        problems.append(
            f"only {passed} specs passed, fewer than the {floor} recorded in {EXPECTED.name}: "
            "a group of specs was skipped or stopped running"
        )
    problems += [f"left on the host by Calyx (removed now): {item}" for item in leftovers]
    return problems


# --- running critest -----------------------------------------------------------------------------


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C, through every cleanup; a second one must not cut them short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def run_critest(binary: str, socket: Path, args: argparse.Namespace, work: Path) -> tuple[int | None, str]:
    """critest against ``socket``; its exit status (None if it had to be killed) and its output."""
    config = work / "crictl.yaml"
    config.write_text("")  # keeps a host's /etc/crictl.yaml out of the run
    tmp = work / "tmp"  # critest's temp dirs (log dirs, host paths) live and die with the work dir
    tmp.mkdir()
    argv = [
        binary,
        f"--runtime-endpoint=unix://{socket}",
        f"--image-endpoint=unix://{socket}",
        f"--config={config}",
        "--ginkgo.no-color",
        f"--ginkgo.timeout={CRITEST_TIMEOUT_S}s",
    ]
    if args.focus:
        argv.append(f"--ginkgo.focus={args.focus}")
    if args.skip:
        argv.append(f"--ginkgo.skip={args.skip}")
    print("running:", " ".join(argv), flush=True)
    report = work / "critest.out"
    env = dict(os.environ, TMPDIR=str(tmp))
    code: int | None = None
    with open(report, "w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:  # until critest ends: --ginkgo.timeout bounds the run
                out.write(line)
                if args.verbose:
                    print(line, end="", flush=True)
            code = proc.wait(STOP_GRACE_S)
        finally:
            if proc.poll() is None:  # interrupted (SIGTERM, SIGINT), or critest hung up without ending
                code = _stop(proc)
    return code, report.read_text(errors="replace")


def _stop(proc: subprocess.Popen[str]) -> int | None:
    """Interrupt critest (ginkgo runs the spec's cleanups), then kill it by PID if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None
    return proc.returncode


def _failure_blocks(output: str, failures: list[str]) -> str:
    """ginkgo's report of each failed spec (timeline and error), for the log of a failed CI run."""
    blocks = re.split(r"\n-{20,}\n", output)
    names = [re.sub(r"^\[[A-Z!]+\]\s*", "", f) for f in failures]
    return "\n".join(b.strip() for b in blocks if any(n in b for n in names) and "Timeline" in b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m critest.run", description=__doc__.split("\n")[0])
    parser.add_argument("--critest", help="critest binary (default: $CRITEST, PATH, ../shared/tools/critest)")
    parser.add_argument("--focus", default="", help="only specs matching this regex (ginkgo.focus)")
    parser.add_argument("--skip", default="", help="skip specs matching this regex (ginkgo.skip)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (critest.out, calyx logs)")
    parser.add_argument("--verbose", action="store_true", help="stream critest's output")
    args = parser.parse_args(argv)

    binary = find_tool("critest", args.critest)
    if binary is None:
        print(
            f"critest not found ({where_looked('critest', args.critest)}): "
            + ("CI must run it." if in_ci() else "nothing to run.")
            + "\ncritest is not a Debian package: take it from a cri-tools release "
            "(critest-<version>-linux-amd64.tar.gz) and give its path with --critest or $CRITEST.\n"
            f"Specs expected to fail offline: {EXPECTED}"
        )
        return 1 if in_ci() else 0
    if os.geteuid() != 0:
        print("critest against Calyx needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1

    from critest import harness  # the environment's modules (tests', bench's) only when it is needed

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    harness.private_ipc_namespace()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="calyx-critest-"))  # $TMPDIR, else /tmp
    work.chmod(0o711)  # containers in a pod user namespace reach their rootfs below it, as /var/lib's
    leftovers: list[str] = []
    code: int | None = None
    calyx_status: int | None = None
    output = ""
    calyx_log = ""
    try:
        with harness.environment(work, leftovers) as daemon:
            code, output = run_critest(binary, daemon.socket, args, work)
            calyx_status = harness.exit_status(daemon)
            calyx_log = daemon.log()
    except KeyboardInterrupt as exc:
        print(f"\ncritest run interrupted ({exc}); what it made is removed", file=sys.stderr)
        return 130
    finally:
        kept = f"work dir kept: {work}" if args.keep else harness.remove_work_dir(work)
        if kept:
            print(kept, file=sys.stderr)

    summary = parse_summary(output)
    expected = expected_failures()
    full_run = not args.focus and not args.skip
    floor = passed_floor() if full_run else None
    problems = verdict(summary, code, expected, floor, leftovers, calyx_status)
    surprises = unexpected(summary, expected)
    print("\n== critest summary ==")
    print(summary.ran or "(no 'Ran N of M Specs' line)")
    print(summary.result or f"(no result line; critest exited {code})")
    for failure in summary.failures:
        print(("  FAILED:   " if failure in surprises else "  expected: ") + failure)
    if surprises:
        print("\n" + _failure_blocks(output, surprises))
    if problems:
        print("\n-- last lines of calyx's log --\n" + "\n".join(calyx_log.splitlines()[-40:]))
    took = time.monotonic() - started
    if problems:
        print(f"critest against Calyx FAILED after {took:.0f} s:\n  " + "\n  ".join(problems))
        return 1
    floor_note = f", floor {floor}" if floor is not None else ""
    print(f"critest against Calyx: OK in {took:.0f} s ({summary.counts.get('Passed', 0)} passed{floor_note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
