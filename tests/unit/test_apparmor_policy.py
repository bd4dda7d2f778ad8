"""Which AppArmor profile a CRI request asks for, and how the kernel's list of loaded profiles is read.

The kernel side (loading, applying) is tested for real in tests/e2e/test_apparmor.py, inside the node
lab where AppArmor is on. Here: the request's two forms, their precedence, and hostile values.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from cri.containers.apparmor import LOCALHOST, RUNTIME_DEFAULT, UNCONFINED, Request, requested
from sandbox.apparmor import AppArmor, AppArmorError, check_name, default_profile_text


def sc(**kw: object) -> pb.LinuxContainerSecurityContext:
    return pb.LinuxContainerSecurityContext(**kw)  # type: ignore[arg-type]


def profile(kind: int, ref: str = "") -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=kind, localhost_ref=ref)  # type: ignore[arg-type]


DEFAULT, FREE, LOCAL = (
    pb.SecurityProfile.RuntimeDefault,
    pb.SecurityProfile.Unconfined,
    pb.SecurityProfile.Localhost,
)


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (sc(), None),
        (sc(apparmor_profile="runtime/default"), Request(RUNTIME_DEFAULT)),
        (sc(apparmor_profile="unconfined"), Request(UNCONFINED)),
        (sc(apparmor_profile="localhost/mine"), Request(LOCALHOST, "mine")),
        (sc(apparmor=profile(DEFAULT)), Request(RUNTIME_DEFAULT)),
        (sc(apparmor=profile(FREE)), Request(UNCONFINED)),
        (sc(apparmor=profile(LOCAL, "mine")), Request(LOCALHOST, "mine")),
        # kubelet may still send the deprecated prefix in localhost_ref
        (sc(apparmor=profile(LOCAL, "localhost/mine")), Request(LOCALHOST, "mine")),
        # the field wins over the deprecated string
        (sc(apparmor=profile(FREE), apparmor_profile="localhost/x"), Request(UNCONFINED)),
        # a localhost_ref means nothing for the other types
        (sc(apparmor=profile(DEFAULT, "x")), Request(RUNTIME_DEFAULT)),
    ],
)
def test_requested(context: pb.LinuxContainerSecurityContext, expected: Request | None) -> None:
    assert requested(context) == expected


@pytest.mark.parametrize("value", ["docker-default", "runtime/Default", "localhost", "/etc/apparmor.d/x"])
def test_unknown_deprecated_values_are_invalid(value: str) -> None:
    with pytest.raises(InvalidArgument):
        requested(sc(apparmor_profile=value))


def test_unknown_profile_type_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        requested(sc(apparmor=profile(7)))


@pytest.mark.parametrize("name", ["", "a b", "a\nb", "a\x00b", "a\tb", "x" * 5000, "bell\x07"])
def test_names_no_kernel_profile_could_carry_are_refused(name: str) -> None:
    with pytest.raises(AppArmorError):
        check_name(name)


def test_names_with_paths_and_dots_are_profile_names() -> None:
    for name in ["calyx-default", "/usr/bin/man", "k8s.app//child", "unconfined-ish"]:
        assert check_name(name) == name


def test_loaded_profiles_are_read_with_their_modes(tmp_path: Path) -> None:
    (tmp_path / "profiles").write_text(
        "calyx-default (enforce)\n/usr/bin/man (complain)\nman_filter (enforce)\nodd name (kill)\n"
    )
    (tmp_path / "enabled").write_text("Y\n")
    apparmor = AppArmor(securityfs=tmp_path, enabled_parameter=tmp_path / "enabled")
    assert apparmor.enabled()
    assert apparmor.loaded() == {
        "calyx-default": "enforce",
        "/usr/bin/man": "complain",
        "man_filter": "enforce",
        "odd name": "kill",
    }
    assert apparmor.is_loaded("man_filter") and not apparmor.is_loaded("man")


def test_disabled_when_the_parameter_says_so_or_securityfs_is_missing(tmp_path: Path) -> None:
    (tmp_path / "enabled").write_text("N\n")
    (tmp_path / "profiles").write_text("")
    assert not AppArmor(securityfs=tmp_path, enabled_parameter=tmp_path / "enabled").enabled()
    (tmp_path / "enabled").write_text("Y\n")
    assert not AppArmor(securityfs=tmp_path / "none", enabled_parameter=tmp_path / "enabled").enabled()
    assert not AppArmor(securityfs=tmp_path, enabled_parameter=tmp_path / "missing").enabled()


def test_default_profile_text_names_the_profile_and_forbids_mounts() -> None:
    text = default_profile_text("calyx-x")
    assert "profile calyx-x " in text and "peer=calyx-x" in text
    assert "deny mount," in text
