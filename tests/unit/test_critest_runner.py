"""critest/run.py: finding critest, what a run without it does (CI or not), summary parsing, and the
verdict: expected failures, the floor of passed specs, critest dying, leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from critest import run, tools

REPO = Path(__file__).resolve().parents[2]

DIGEST = (
    "  [FAIL] [k8s.io] Image Manager [It] public image with digest should be pulled and removed"
    " [Conformance] [Serial]"
)
EXEC_SYNC = "  \x1b[1m[FAIL] [k8s.io] Container runtime [It] runtime should support execSync\x1b[0m"
CLOSING = ["", "Ran 108 of 122 Specs in 75.1 seconds"]
SUMMARY = "\n".join(
    [
        "Summarizing 2 Failures:",
        DIGEST,
        EXEC_SYNC,
        *CLOSING,
        "FAIL! -- 106 Passed | 2 Failed | 0 Pending | 14 Skipped",
    ]
)
GOOD = "\n".join(
    ["Summarizing 1 Failure:", DIGEST, *CLOSING, "FAIL! -- 107 Passed | 1 Failed | 0 Pending | 14 Skipped"]
)


def runner(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "CRITEST")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "critest.run", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=environ,
    )  # fmt: skip


def test_without_critest_it_says_so_and_exits_0(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-critest"
    done = runner(tmp_path, "--critest", str(missing), TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "critest not found" in done.stdout and str(missing) in done.stdout
    # Nothing was started: no work dir of its own (TMPDIR keeps other critest runs on the host out of it).
    assert not list(tmp_path.glob("calyx-critest-*"))


def test_without_critest_ci_fails(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-critest"
    done = runner(tmp_path, CI="true", CRITEST=str(missing))
    assert done.returncode == 1
    assert "critest not found" in done.stdout and "CI must run it" in done.stdout


def test_critest_is_found_by_flag_variable_path_then_shared_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tool(name: str) -> Path:
        path = tmp_path / name / "critest"
        path.parent.mkdir()
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    flag, variable, on_path, shared = tool("flag"), tool("var"), tool("path"), tool("shared")
    monkeypatch.setattr(tools, "SHARED_TOOLS", shared.parent)
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setenv("CRITEST", str(variable))
    assert tools.find_tool("critest", str(flag)) == str(flag)
    assert tools.find_tool("critest") == str(variable)
    monkeypatch.setenv("CRITEST", str(tmp_path / "missing"))
    assert tools.find_tool("critest") is None  # a path asked for is not replaced by another
    monkeypatch.delenv("CRITEST")
    assert tools.find_tool("critest") == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert tools.find_tool("critest") == str(shared)
    monkeypatch.setattr(tools, "SHARED_TOOLS", tmp_path / "none")
    assert tools.find_tool("critest") is None


def test_expected_failures_are_listed_with_a_reason_and_a_floor_is_recorded() -> None:
    names = run.expected_failures()
    assert names == ["public image with digest should be pulled and removed"]
    text = run.EXPECTED.read_text()
    for name in names:
        entry = text.split(f"`{name}`", 1)[1].split("\n- ", 1)[0]
        assert "—" in entry and len(entry) > 40, f"{name} has no reason"
    assert run.passed_floor() == 107


def test_summary_parsing_and_unexpected_failures() -> None:
    summary = run.parse_summary(SUMMARY)
    assert summary.ran == "Ran 108 of 122 Specs in 75.1 seconds"
    assert summary.result.startswith("FAIL! -- 106 Passed")
    assert summary.counts == {"Passed": 106, "Failed": 2, "Pending": 0, "Skipped": 14}
    assert len(summary.failures) == 2
    surprises = run.unexpected(summary, run.expected_failures())
    assert surprises == ["[FAIL] [k8s.io] Container runtime [It] runtime should support execSync"]


def test_verdict() -> None:
    expected = run.expected_failures()
    good = run.parse_summary(GOOD)
    assert run.verdict(good, 1, expected, 107, []) == []
    assert run.verdict(good, 1, expected, None, []) == []

    bad = run.parse_summary(SUMMARY)
    problems = run.verdict(bad, 1, expected, 107, [])
    assert any("unexpected failure" in p and "execSync" in p for p in problems)
    assert any("only 106 specs passed" in p for p in problems)
    assert not any("only" in p for p in run.verdict(bad, 1, expected, None, []))  # a focused run

    # a group of specs silently skipped: no failure, but fewer passed than the floor
    skipped = run.parse_summary(
        "Ran 98 of 122 Specs\nSUCCESS! -- 97 Passed | 0 Failed | 0 Pending | 25 Skipped"
    )
    assert any("fewer than the 107" in p for p in run.verdict(skipped, 0, expected, 107, []))
    # critest died midway: no summary at all
    assert any(
        "without its summary" in p for p in run.verdict(run.parse_summary("Running Suite"), -9, [], 107, [])
    )
    # Calyx leaked something
    leak = run.verdict(good, 1, expected, 107, ["mount /tmp/x/calyx/run/ns/net/abc"])
    assert leak == ["left on the host by Calyx (removed now): mount /tmp/x/calyx/run/ns/net/abc"]
