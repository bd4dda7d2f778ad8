"""Failpoints: named places where a test can make the daemon die or fail on purpose.

``CALYX_FAILPOINTS=pod.after_netns=kill,pod.after_network=error`` (read from the environment at each hit,
so a restarted daemon without the variable runs normally). ``kill`` sends SIGKILL to the daemon itself,
which is how tests check that recovery cleans up a half-made object; ``error`` raises Internal so the
undo path of the operation runs; ``cleanup.<what>=error`` fails every cleanup of that kind
(calyx_base/cleanups.py); ``wait:DIR`` touches ``DIR/<name>.reached`` and holds the call there until
``DIR/<name>.go`` exists, so a test can act while an operation is half-way; ``wait-first:DIR`` holds
only the first call to get there (the one that makes ``<name>.reached``), so a test can show what other
calls do meanwhile.
Outside tests the variable is unset and a hit costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from calyx_base import poll
from calyx_base.errors import Internal

log = logging.getLogger("calyx_base.failpoints")

ENV = "CALYX_FAILPOINTS"
WAIT_SECONDS = 300.0


def _actions() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    actions: dict[str, str] = {}
    for item in spec.split(","):
        name, sep, action = item.strip().partition("=")
        if name and sep:
            actions[name] = action.strip()
    return actions


def hit(name: str, **context: str) -> None:
    """Act on the failpoint ``name`` if the environment arms it; ``context`` (ids) goes to the log."""
    action = _actions().get(name)
    if not action:
        return
    log.warning("failpoint hit", extra={"failpoint": name, "action": action, **context})
    if action == "kill":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "error":
        raise Internal(f"failpoint {name} fired")
    elif action.startswith("wait:"):
        where = Path(action.removeprefix("wait:"))
        (where / f"{name}.reached").touch()
        poll.until((where / f"{name}.go").exists, WAIT_SECONDS, 0.02)
    elif action.startswith("wait-first:"):
        where = Path(action.removeprefix("wait-first:"))
        try:
            os.close(os.open(where / f"{name}.reached", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC))
        except FileExistsError:
            return  # another call is, or was, the one held
        poll.until((where / f"{name}.go").exists, WAIT_SECONDS, 0.02)
