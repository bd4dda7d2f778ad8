"""Which AppArmor profile a container runs under, decided from its CRI security context as containerd does.

- ``apparmor`` (SecurityProfile) wins over the deprecated ``apparmor_profile`` string
  (``runtime/default``, ``unconfined``, ``localhost/<name>``).
- On a host with AppArmor: nothing asked means RuntimeDefault; RuntimeDefault is Calyx's own profile
  (sandbox/apparmor.py), loaded on first use, except for privileged containers; Unconfined is no
  profile; Localhost names a profile the kernel must already have loaded, else the create is refused.
- On a host without AppArmor: a Localhost profile is refused (running the container unconfined would
  silently drop what was asked); RuntimeDefault and Unconfined mean no profile, as nothing can confine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from calyx_base.errors import FailedPrecondition, InvalidArgument
from cri.api import api_pb2 as pb
from sandbox.apparmor import AppArmor, AppArmorError, check_name

log = logging.getLogger("cri.containers.apparmor")

RUNTIME_DEFAULT = "RuntimeDefault"
UNCONFINED = "Unconfined"
LOCALHOST = "Localhost"
LOCALHOST_PREFIX = "localhost/"


@dataclass(frozen=True)
class Request:
    kind: str
    localhost_name: str = ""


def requested(sc: pb.LinuxContainerSecurityContext) -> Request | None:
    """What the request asks for; None when it names no AppArmor profile at all."""
    if sc.HasField("apparmor"):
        try:
            kind = pb.SecurityProfile.ProfileType.Name(sc.apparmor.profile_type)
        except ValueError:
            raise InvalidArgument(f"unknown AppArmor profile type {sc.apparmor.profile_type}") from None
        ref = sc.apparmor.localhost_ref
        # The localhost/ prefix belongs to the deprecated string form; kubelet may still send it.
        name = ref[len(LOCALHOST_PREFIX) :] if ref.startswith(LOCALHOST_PREFIX) else ref
        return Request(kind, name if kind == LOCALHOST else "")
    value = sc.apparmor_profile
    if not value:
        return None
    if value == "runtime/default":
        return Request(RUNTIME_DEFAULT)
    if value == "unconfined":
        return Request(UNCONFINED)
    if value.startswith(LOCALHOST_PREFIX):
        return Request(LOCALHOST, value[len(LOCALHOST_PREFIX) :])
    raise InvalidArgument(
        f"unknown AppArmor profile {value!r} (runtime/default, unconfined or localhost/<name>)"
    )


def profile_for(sc: pb.LinuxContainerSecurityContext, apparmor: AppArmor, container_id: str) -> str | None:
    """The profile runc applies to the container (OCI ``process.apparmorProfile``); None: unconfined."""
    asked = requested(sc)
    if asked is not None and asked.kind == LOCALHOST:
        if not asked.localhost_name:
            raise InvalidArgument("a Localhost AppArmor profile needs a name (localhost_ref)", container_id)
        try:
            check_name(asked.localhost_name)
        except AppArmorError as exc:
            raise InvalidArgument(str(exc), container_id) from None
    if not apparmor.enabled():
        if asked is not None and asked.kind == LOCALHOST:
            raise FailedPrecondition(
                f"AppArmor is not enabled on this host: cannot confine the container with the "
                f"localhost profile {asked.localhost_name!r}",
                container_id,
            )
        return None
    kind = asked.kind if asked is not None else RUNTIME_DEFAULT
    if kind == UNCONFINED or (kind == RUNTIME_DEFAULT and sc.privileged):
        return None
    if kind == RUNTIME_DEFAULT:
        try:
            return apparmor.ensure_default()
        except AppArmorError as exc:
            raise FailedPrecondition(str(exc), container_id) from None
    name = asked.localhost_name if asked is not None else ""
    try:
        loaded = apparmor.is_loaded(name)
    except AppArmorError as exc:
        raise FailedPrecondition(str(exc), container_id) from None
    if not loaded:
        raise FailedPrecondition(
            f"AppArmor profile {name!r} is not loaded on this host (load it with apparmor_parser first)",
            container_id,
        )
    return name
