"""critest/run.py: without a critest binary it says so and succeeds; summary parsing and expectations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from critest import run

REPO = Path(__file__).resolve().parents[2]


def test_without_critest_it_says_so_and_exits_0(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-critest"
    done = subprocess.run(
        [sys.executable, "-m", "critest.run", "--critest", str(missing)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "critest is not installed" in done.stdout and str(missing) in done.stdout
    assert not list(Path("/tmp").glob("calyx-critest-*/calyx.sock"))  # nothing was started


def test_expected_failures_are_listed_with_a_reason() -> None:
    names = run.expected_failures()
    assert "public image with digest should be pulled and removed" in names
    text = run.EXPECTED.read_text()
    for name in names:
        entry = text.split(f"`{name}`", 1)[1].split("\n- ", 1)[0]
        assert "—" in entry and len(entry) > 40, f"{name} has no reason"


def test_summary_parsing_and_unexpected_failures() -> None:
    output = "\n".join(
        [
            "Ran 80 of 120 Specs in 300.1 seconds",
            "FAIL! -- 78 Passed | 2 Failed | 0 Pending | 40 Skipped",
            "[FAIL] [k8s.io] Image Manager public image with digest should be pulled and removed"
            " [Conformance]",
            "\x1b[1m[FAIL] [k8s.io] Container runtime should support execSync [Conformance]\x1b[0m",
        ]
    )
    summary = run.parse_summary(output)
    assert summary.ran.startswith("Ran 80 of 120") and summary.result.startswith("FAIL!")
    assert len(summary.failures) == 2
    surprises = run.unexpected(summary, run.expected_failures())
    assert surprises == ["[FAIL] [k8s.io] Container runtime should support execSync [Conformance]"]
