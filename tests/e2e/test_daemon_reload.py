"""SIGHUP: the daemon takes up registries (mirrors, credentials), pinned images and the log level from
its config files without a restart, names what needs one, and keeps its config when the new one is bad."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w

from cri.api import api_pb2 as pb
from tests.daemon import Daemon
from tests.image_fixtures import USERS
from tests.registry import free_port
from tests.waiting import wait_for


def hang_up(d: Daemon, message: str) -> None:
    """SIGHUP the daemon and wait until it has logged ``message`` once more than before."""
    assert d.proc is not None
    seen = d.log().count(message)
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: d.log().count(message) > seen, f"the daemon logs {message!r} after SIGHUP")
    assert d.proc.poll() is None, "SIGHUP ended the daemon"


def dropin(d: Daemon, table: dict[str, Any] | str) -> Path:
    path = d.base / "calyx.d" / "50-reload.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(table if isinstance(table, str) else tomli_w.dumps(table))
    return path


def running_config(d: Daemon) -> dict[str, Any]:
    return dict(json.loads(d.runtime.Status(pb.StatusRequest(verbose=True)).info["config"]))


def pull(d: Daemon, ref: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120).image_ref)


def test_sighup_reloads_registries_pinned_images_and_log_level(
    daemon_factory, image_registry, basic_registry
) -> None:
    basic = basic_registry.host
    nobody = f"127.0.0.1:{free_port()}"  # a registry that is not there: reachable only through a mirror
    d = daemon_factory(
        {"server": {"log_level": "info"}, "images": {"registries": {basic: {"insecure": True}}}}
    )
    with pytest.raises(grpc.RpcError):
        pull(d, f"{basic}/calyx-test/busybox")  # no credentials yet
    with pytest.raises(grpc.RpcError):
        pull(d, f"{nobody}/calyx-test/web")  # no mirror yet
    d.runtime.Version(pb.VersionRequest())
    assert "method=Version" not in d.log()  # a frequent call: logged at debug level only

    user, password = next(iter(USERS.items()))
    dropin(
        d,
        {
            "server": {"log_level": "debug"},
            "images": {
                "pinned": [f"{basic}/calyx-test/busybox:latest"],
                "registries": {
                    basic: {"username": user, "password": password},
                    nobody: {"mirrors": [f"http://{image_registry.host}"]},
                },
            },
            "network": {"bridge": "cxreload0"},  # needs a restart
        },
    )
    hang_up(d, "config reloaded")

    busybox = pull(d, f"{basic}/calyx-test/busybox")  # the credentials were taken up
    pull(d, f"{nobody}/calyx-test/web")  # and the mirror
    status = d.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=busybox))).image
    assert status.pinned is True
    d.runtime.Version(pb.VersionRequest())
    assert "method=Version" in d.log()
    config = running_config(d)
    assert config["server"]["log_level"] == "debug"
    assert config["network"]["bridge"] != "cxreload0"  # left as it runs until a restart
    log = d.log()
    assert "needs_restart=network.bridge" in log and "take effect at the next restart" in log
    assert "images.pinned" in log and f"images.registries.{nobody}.mirrors" in log
    assert password not in log  # options are named, not their values


def test_sighup_with_a_bad_config_keeps_the_running_one(daemon_factory) -> None:
    d = daemon_factory({"server": {"log_level": "info"}, "images": {"pinned": ["busybox:1.36"]}})
    before = running_config(d)
    bad_ones: list[tuple[dict[str, Any] | str, str]] = [
        ('[images]\npinned = ["unterminated', "not valid TOML"),
        ({"images": {"pinnd": []}}, "images.pinnd: unknown option"),
        ({"server": {"log_level": "loud"}}, "server.log_level"),
    ]
    for bad, reason in bad_ones:
        dropin(d, bad)
        hang_up(d, "config reload failed")
        assert running_config(d) == before
        assert reason in d.log().rsplit("config reload failed", 1)[1].splitlines()[0]
    dropin(d, {"images": {"pinned": ["busybox:1.37"]}})  # fixed: the next SIGHUP takes it up
    hang_up(d, "config reloaded")
    assert running_config(d)["images"]["pinned"] == ["busybox:1.37"]
