"""Compatibility with spdystream (the SPDY implementation inside kubectl and crictl), which never
sends WINDOW_UPDATE or SETTINGS: exec output, stdin, exit codes and older protocol versions."""

from __future__ import annotations

import json

import pytest

from tests.spdystream_client import run_spdyexec
from tests.streaming_host import exec_url, host_server


@pytest.fixture
def server():
    with host_server() as (srv, backend):
        yield srv, backend


def test_spdystream_exec_with_stdin_and_exit_code(server, spdyexec) -> None:
    srv, _ = server
    url = exec_url(srv, ["sh", "-c", "cat; echo err >&2; exit 3"], stdin=True)
    proc, status = run_spdyexec(spdyexec, url, "error,stdin,stdout,stderr", stdin=b"in and out\n" * 5000)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"in and out\n" * 5000
    assert proc.stderr == b"err\n"
    assert json.loads(status)["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_spdystream_large_output_needs_no_window_updates(server, spdyexec) -> None:
    srv, _ = server
    url = exec_url(srv, ["head", "-c", "20000000", "/dev/zero"], stderr=False)
    proc, status = run_spdyexec(spdyexec, url, "error,stdout")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == 20_000_000
    assert json.loads(status) == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"])
def test_spdystream_older_protocols(server, spdyexec, protocol) -> None:
    srv, _ = server
    proc, status = run_spdyexec(
        spdyexec, exec_url(srv, ["sh", "-c", "echo hi; exit 1"]), "error,stdout,stderr", protocol
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"hi\n"
    assert b"exit code 1" in status
