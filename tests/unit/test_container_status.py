"""A container's status never shows half an exit (cri/containers/status.py, model.mark_exited).

The exit watcher records an exit while status and list read records without a lock: it writes the exit's
fields, then the state. A status read in between sees the old state with the new fields; it must show
the container still running, with no exit code or reason, never a running container with an exit.
"""

from __future__ import annotations

from cri.api import api_pb2 as pb
from cri.containers.model import CREATED, Container
from cri.containers.status import to_status


def container(state: str) -> Container:
    return Container(
        id="c" * 64, pod_id="p" * 64, name="quits", attempt=0, state=state, created_at=1,
        dir="/nonexistent", handler="runc", runtime_path="runc", runtime_root="/run/runc",
    )  # fmt: skip


def test_an_exit_shows_only_with_the_exited_state() -> None:
    c = container(CREATED)
    c.mark_started(10)
    # the exit's fields written, not yet its state: what a status read at that moment sees
    c.exit_code, c.finished_at, c.reason, c.message = 3, 20, "Error", "why"
    st = to_status(c)
    assert (st.state, st.started_at, st.exit_code, st.finished_at, st.reason, st.message) == (
        pb.CONTAINER_RUNNING, 10, 0, 0, "", ""
    )  # fmt: skip
    c.mark_exited(3, 20, "Error", "why")
    st = to_status(c)
    assert (st.state, st.started_at, st.exit_code, st.finished_at, st.reason, st.message) == (
        pb.CONTAINER_EXITED, 10, 3, 20, "Error", "why"
    )  # fmt: skip


def test_a_start_that_failed_shows_its_error() -> None:
    c = container(CREATED)
    c.mark_exited(128, 5, "StartError", "runc said no")
    st = to_status(c)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 128, "StartError")
    assert st.message == "runc said no"
