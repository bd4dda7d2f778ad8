"""AppArmor on this host: is it on, which profiles the kernel has loaded, and Calyx's default profile.

Containers are confined the way runc does it: the OCI spec names a profile
(``process.apparmorProfile``) and runc asks the kernel to switch to it when it execs the container's
process. So a profile must be loaded in the kernel before the container starts; this module reads the
kernel's list and loads Calyx's own default profile with ``apparmor_parser`` (Debian's ``apparmor``
package). Kernel-facing: it imports nothing from ``cri/``; its errors carry no gRPC code (the containers
domain decides what a client is told).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("sandbox.apparmor")

SECURITYFS = Path("/sys/kernel/security/apparmor")
ENABLED_PARAMETER = Path("/sys/module/apparmor/parameters/enabled")
DEFAULT_PROFILE = "calyx-default"
# A profile name as the kernel lists it: printable, no spaces, no control characters. Names from CRI
# requests are checked against this before they reach the kernel or runc.
_NAME_FORBIDDEN = set(" \t\n\r\x00")


class AppArmorError(Exception):
    """AppArmor could not do what was asked (the message says what and why)."""


def default_profile_text(name: str = DEFAULT_PROFILE) -> str:
    """Calyx's profile for containers that ask for RuntimeDefault (or nothing, on an AppArmor host).

    Self-contained (no includes, so that it loads with any apparmor package): a container keeps what a
    process in its namespaces normally does, and loses what only the host's administration needs: new
    mounts, the kernel's debug and firmware interfaces, tracing processes outside the container.
    """
    return f"""\
# Calyx's default AppArmor profile for containers (the CRI's RuntimeDefault). Loaded by Calyx with
# apparmor_parser; replaced when Calyx loads a newer text.
abi <abi/3.0>,

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  # A container's own files, sockets and capabilities (which runc has already bounded).
  file,
  network,
  capability,
  unix,
  dbus,

  # Its processes may signal and trace one another; the runtime (unconfined) may signal them.
  signal (send, receive) peer={name},
  signal (receive) peer=unconfined,
  ptrace (trace, read, tracedby, readby) peer={name},

  # Its mounts were made by runc before it started: none afterwards.
  deny mount,
  deny remount,
  deny pivot_root,
  umount,

  # Host-wide kernel interfaces, whatever the container's capabilities and mounts.
  deny /proc/sysrq-trigger rwklx,
  deny /proc/kcore rwklx,
  deny /proc/kmsg rwklx,
  deny /proc/sys/kernel/core_pattern wklx,
  deny /proc/sys/kernel/modprobe wklx,
  deny /proc/sys/vm/** wklx,
  deny /proc/sys/fs/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/kernel/debug/** rwklx,
  deny /sys/** wklx,
}}
"""


def check_name(name: str) -> str:
    """The profile name, or AppArmorError when no kernel profile could carry it."""
    if not name or len(name) > 4096 or _NAME_FORBIDDEN & set(name) or not name.isprintable():
        raise AppArmorError(f"{name!r} is not an AppArmor profile name")
    return name


class AppArmor:
    """This host's AppArmor, read from securityfs; loads Calyx's default profile once, when first needed."""

    def __init__(
        self,
        securityfs: Path = SECURITYFS,
        enabled_parameter: Path = ENABLED_PARAMETER,
        parser: str = "apparmor_parser",
    ) -> None:
        self.securityfs = securityfs
        self.enabled_parameter = enabled_parameter
        self.parser = parser
        self._lock = threading.Lock()
        self._default_loaded = False

    def enabled(self) -> bool:
        """The kernel runs AppArmor and its securityfs can be read (runc checks the same two things)."""
        try:
            on = self.enabled_parameter.read_text().strip() == "Y"
        except OSError:
            return False
        return on and (self.securityfs / "profiles").exists()

    def loaded(self) -> dict[str, str]:
        """Loaded profiles by name, with their mode ("enforce", "complain"...)."""
        try:
            text = (self.securityfs / "profiles").read_text()
        except OSError as exc:
            raise AppArmorError(f"cannot read the loaded AppArmor profiles: {exc}") from None
        profiles = {}
        for line in text.splitlines():
            name, _, mode = line.rstrip().rpartition(" (")
            if name and mode.endswith(")"):
                profiles[name] = mode[:-1]
        return profiles

    def is_loaded(self, name: str) -> bool:
        return check_name(name) in self.loaded()

    def ensure_default(self) -> str:
        """Calyx's default profile, loaded (or replaced by this version of its text) on first use."""
        with self._lock:
            if not self._default_loaded:
                self.load(DEFAULT_PROFILE, default_profile_text(DEFAULT_PROFILE))
                self._default_loaded = True
        return DEFAULT_PROFILE

    def load(self, name: str, text: str) -> None:
        """Load (or replace) a profile from its text with apparmor_parser."""
        started = time.monotonic()
        argv = [self.parser, "--replace", "--skip-cache"]
        try:
            done = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AppArmorError(f"cannot load AppArmor profile {name}: {' '.join(argv)}: {exc}") from None
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()
            raise AppArmorError(f"cannot load AppArmor profile {name}: {' '.join(argv)}: {stderr}")
        log.info(
            "apparmor profile loaded",
            extra={"profile": name, "duration_ms": round((time.monotonic() - started) * 1000, 1)},
        )
