"""cri/fields.py: the request strings Calyx passes on are what the field means and nothing more."""

from __future__ import annotations

import pytest

from calyx_base.errors import InvalidArgument
from cri import fields


@pytest.mark.parametrize(
    "value", ["web-0", "PodSandbox-for-create-test-3f2a", "kube_system", "a.b.c", "0b3e1f8c-6a7d-4a83", "x"]
)
def test_kubelet_and_critest_names_pass(value: str) -> None:
    assert fields.name("name", value) == value


@pytest.mark.parametrize(
    "value", ["", "a;b", "a=b", "a b", "a\nb", "a\0b", "-a", "a-", "a/b", "é", "a" * 254]
)
def test_names_that_would_split_cni_args_or_a_path_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        fields.name("name", value)


@pytest.mark.parametrize(
    ("value", "clean"),
    [("/var/log/pods/ns_p_u", "/var/log/pods/ns_p_u"), ("/var/log/pods/x/", "/var/log/pods/x")],
)
def test_clean_absolute_paths(value: str, clean: str) -> None:
    assert fields.clean_absolute_path("log_directory", value) == clean


@pytest.mark.parametrize("value", ["relative", "/a/../etc", "/a/./b", "/a//b", "/a\0b", "/" + "a" * 5000])
def test_unclean_absolute_paths_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="log_directory"):
        fields.clean_absolute_path("log_directory", value)


@pytest.mark.parametrize("value", ["c/0.log", "c.log", "a/b/c.log"])
def test_clean_relative_paths(value: str) -> None:
    assert fields.relative_path("log_path", value) == value


@pytest.mark.parametrize(
    "value", ["/etc/x.log", "../x.log", "a/../../x.log", "./x.log", "a//b.log", ".", "a\0b", "a/"]
)
def test_relative_paths_that_leave_their_dir_or_are_unclean_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="log_path"):
        fields.relative_path("log_path", value)


@pytest.mark.parametrize(
    ("value", "normal"), [("::FFFF:1.2.3.4", "::ffff:102:304"), ("fd00:0::a", "fd00::a")]
)
def test_ip_addresses_are_normalised(value: str, normal: str) -> None:
    assert fields.ip_address("host_ip", value) == normal


@pytest.mark.parametrize(
    "value", ["fe80::1%eth0", "fe80::1%x\n-A INPUT -j ACCEPT", "1.2.3.4 ", "1.2.3.4\n", "x"]
)
def test_zones_and_anything_but_an_address_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="host_ip"):
        fields.ip_address("host_ip", value)


def test_nul_in_text_and_bytes() -> None:
    fields.no_nul("env", b"fine")
    for value in ("a\0", b"a\0"):
        with pytest.raises(InvalidArgument, match="NUL"):
            fields.no_nul("env", value)
