"""An exit is recorded whole: a status read meanwhile shows the container running or its complete exit.

Recording an exit reads cgroups to tell an OOM kill from another death, which takes a moment; a status
or listing in that moment once showed EXITED with exit code 137 and no reason (the node lab's OOM test
caught it). The failpoint ``container.exit_recording`` holds the recording there while a status is read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from cri.api import api_pb2 as pb
from tests.container_fixtures import Cx
from tests.image_fixtures import LoopbackRegistry
from tests.net_fixtures import Net
from tests.waiting import wait_for

STEP = "container.exit_recording"


def test_a_status_read_while_an_exit_is_recorded_shows_the_whole_exit(
    builtin_net: Callable[..., Net], image_registry: LoopbackRegistry, short_tmp: Path
) -> None:
    held = short_tmp / "held"
    held.mkdir()
    release = held / f"{STEP}.go"
    net = builtin_net(
        env={"CALYX_FAILPOINTS": f"{STEP}=wait-first:{held}"},
        config={"images": {"registries": {image_registry.host: {"insecure": True}}}},
    )
    logs = short_tmp / "podlogs"
    logs.mkdir()
    cx = Cx(net, image_registry, logs)
    try:
        pod = cx.pod()
        # it quits once told, after StartContainer, whose own look at the exit would be the one held
        cid = cx.run(pod, "quits", ["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; exit 3"])
        cx.output(cid, "touch", "/tmp/go")
        wait_for(lambda: (held / f"{STEP}.reached").exists(), "the exit to be recorded", timeout=60)
        threading.Timer(1.0, release.touch).start()
        st = cx.status(cid).status
        assert (st.state, st.exit_code, st.reason) in {
            (pb.CONTAINER_RUNNING, 0, ""),
            (pb.CONTAINER_EXITED, 3, "Error"),
        }
        st = cx.wait_exit(cid)
        assert (st.exit_code, st.reason, st.finished_at > st.started_at > 0) == (3, "Error", True)
    finally:
        release.touch()
        cx.cleanup()
