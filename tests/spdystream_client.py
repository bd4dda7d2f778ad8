"""Build tests/clients/spdyexec.go (on spdystream, the SPDY library kubectl and crictl use) once per
session: a real-world client for compatibility tests. Needs Debian's golang-go and
golang-github-docker-spdystream-dev (deploy/install.sh --dev installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "clients" / "spdyexec.go"
GOPATH = "/usr/share/gocode"


@pytest.fixture(scope="session")
def spdyexec() -> Iterator[Path]:
    go = shutil.which("go")
    assert go, "the Go toolchain is missing: run deploy/install.sh --dev"
    assert Path(GOPATH, "src/github.com/docker/spdystream").is_dir(), (
        "spdystream is missing: install.sh --dev"
    )
    work = Path(tempfile.mkdtemp(prefix="cx-go-", dir="/tmp"))
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOCACHE=str(work / "cache"), GOFLAGS="")
    binary = work / "spdyexec"
    subprocess.run([go, "build", "-o", str(binary), str(SOURCE)], check=True, env=env, timeout=300)
    yield binary
    shutil.rmtree(work, ignore_errors=True)


def run_spdyexec(
    binary: Path, url: str, streams: str, protocol: str = "v4.channel.k8s.io", stdin: bytes = b""
) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """Run the client; returns the process (stdout/stderr captured) and the error stream's bytes."""
    with tempfile.NamedTemporaryFile(prefix="cx-status-", dir="/tmp") as status:
        proc = subprocess.run(
            [str(binary), url, protocol, streams, status.name], input=stdin, capture_output=True, timeout=300
        )
        return proc, Path(status.name).read_bytes()
