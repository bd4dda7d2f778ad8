"""RunPodSandbox request checks (cri/pods/validate.py): what is refused before anything is made."""

from __future__ import annotations

import pytest

from calyx_base.errors import InvalidArgument
from cri.api import api_pb2 as pb
from cri.config import Config
from cri.pods.validate import validate
from sandbox.cgroups import build_driver

# The daemon's default driver (nothing is made: validate only checks a parent's syntax with it).
DRIVER = build_driver("cgroupfs")


def _request(**kw: object) -> pb.RunPodSandboxRequest:
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"), hostname="p"
    )
    handler = str(kw.pop("runtime_handler", ""))
    linux = kw.pop("linux", None)
    for key, value in kw.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        else:
            setattr(config, key, value)
    if linux is not None:
        config.linux.CopyFrom(linux)
    return pb.RunPodSandboxRequest(config=config, runtime_handler=handler)


def _ns(**options: object) -> pb.LinuxPodSandboxConfig:
    return pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(**options))
    )


def test_defaults_give_pod_namespaces_and_the_default_handler() -> None:
    spec = validate(_request(), Config().runtime, DRIVER)
    assert spec.runtime_handler == "runc"
    assert spec.namespace_options == {
        "network": "POD",
        "pid": "POD",
        "ipc": "POD",
        "target_id": "",
        "userns": {},
    }
    assert spec.own_net and spec.own_ipc and spec.shared_pid
    assert spec.config["metadata"] == {"name": "p", "uid": "u", "namespace": "n"}


def test_host_network_drops_port_mappings_and_keeps_the_rest() -> None:
    spec = validate(
        _request(
            linux=_ns(network=pb.NODE, pid=pb.CONTAINER),
            port_mappings=[pb.PortMapping(container_port=80, host_port=80)],
        ),
        Config().runtime,
        None,
    )
    assert not spec.own_net and spec.own_ipc and not spec.shared_pid
    assert spec.port_mappings == []


def test_port_mappings_are_normalised() -> None:
    mapping = pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")
    spec = validate(_request(port_mappings=[mapping]), Config().runtime, DRIVER)
    assert spec.port_mappings == [
        {"protocol": "udp", "container_port": 53, "host_port": 5353, "host_ip": "127.0.0.1"}
    ]


def _set(path: str, value: object):
    def change(request: pb.RunPodSandboxRequest) -> None:
        *parents, name = path.split(".")
        target = request
        for part in parents:
            target = getattr(target, part)
        setattr(target, name, value)

    return change


def _with(**kw: object):
    return lambda request: request.MergeFrom(_request(**kw))


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (_set("config.metadata.name", ""), InvalidArgument, "metadata.name"),
        (_set("config.metadata.uid", ""), InvalidArgument, "metadata.uid"),
        (_set("config.metadata.namespace", ""), InvalidArgument, "metadata.namespace"),
        (_set("runtime_handler", "kata"), InvalidArgument, "kata"),
        (_with(linux=_ns(network=pb.CONTAINER)), InvalidArgument, "namespace_options.network"),
        (_with(linux=_ns(ipc=pb.TARGET)), InvalidArgument, "namespace_options.ipc"),
        (_with(linux=_ns(pid=pb.TARGET)), InvalidArgument, "target_id"),
        (_with(linux=_ns(userns_options=pb.UserNamespace(mode=pb.POD))), InvalidArgument, "exactly one"),
        (
            _with(port_mappings=[pb.PortMapping(container_port=0, host_port=80)]),
            InvalidArgument,
            "container_port",
        ),
        (
            _with(port_mappings=[pb.PortMapping(container_port=80, host_port=70000)]),
            InvalidArgument,
            "host_port",
        ),
        (
            _with(port_mappings=[pb.PortMapping(container_port=80, host_ip="localhost")]),
            InvalidArgument,
            "host_ip",
        ),
        (_set("config.hostname", "bad_host"), InvalidArgument, "hostname"),
        (_set("config.log_directory", "var/log/pods"), InvalidArgument, "log_directory"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(change, error: type, words: str) -> None:
    request = _request()
    change(request)
    with pytest.raises(error, match=words):
        validate(request, Config().runtime, DRIVER)


def test_userns_node_is_accepted() -> None:
    request = _request(linux=_ns(userns_options=pb.UserNamespace(mode=pb.NODE)))
    spec = validate(request, Config().runtime, DRIVER)
    assert spec.namespace_options["userns"]["mode"] == "NODE"
    assert not spec.own_userns


def _idmap(container_id: int = 0, host_id: int = 100000, length: int = 65536) -> pb.IDMapping:
    return pb.IDMapping(container_id=container_id, host_id=host_id, length=length)


def test_userns_pod_with_one_mapping_each_is_normalised() -> None:
    userns = pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[_idmap(host_id=200000, length=1000)])
    spec = validate(_request(linux=_ns(pid=pb.CONTAINER, userns_options=userns)), Config().runtime, DRIVER)
    assert spec.own_userns
    assert spec.namespace_options["userns"] == {
        "mode": "POD",
        "uids": [{"container_id": 0, "host_id": 100000, "length": 65536}],
        "gids": [{"container_id": 0, "host_id": 200000, "length": 1000}],
    }


@pytest.mark.parametrize(
    ("userns", "extra", "words"),
    [
        # the shapes critest refuses: two mappings, container id 0 not mapped, CONTAINER and TARGET
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap(), _idmap(host_id=2000)], gids=[_idmap()]), {}, "uids"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[_idmap(), _idmap()]), {}, "gids"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap(container_id=1)], gids=[_idmap()]), {}, "container id 0"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[]), {}, "exactly one"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap(length=0)], gids=[_idmap()]), {}, "length 0"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap(host_id=2**32 - 10)], gids=[_idmap()]), {}, "largest"),
        (pb.UserNamespace(mode=pb.CONTAINER), {}, "CONTAINER"),
        (pb.UserNamespace(mode=pb.TARGET), {}, "TARGET"),
        (pb.UserNamespace(mode=pb.NODE, uids=[_idmap()], gids=[_idmap()]), {}, "NODE takes no"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[_idmap()]), {"network": pb.NODE}, "network"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[_idmap()]), {"pid": pb.NODE}, "pid"),
        (pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[_idmap()]), {"ipc": pb.NODE}, "ipc"),
    ],
)
def test_bad_user_namespaces_are_refused(userns: pb.UserNamespace, extra: dict, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        validate(_request(linux=_ns(userns_options=userns, **extra)), Config().runtime, DRIVER)


def test_privileged_pod_with_a_user_namespace_is_refused() -> None:
    linux = _ns(
        pid=pb.CONTAINER, userns_options=pb.UserNamespace(mode=pb.POD, uids=[_idmap()], gids=[_idmap()])
    )
    linux.security_context.privileged = True
    with pytest.raises(InvalidArgument, match="privileged"):
        validate(_request(linux=linux), Config().runtime, DRIVER)


@pytest.mark.parametrize("value", ["fast", "10X", "-1M", "0", "100G"])
def test_bad_bandwidth_annotations_are_refused(value: str) -> None:
    request = _request()
    request.config.annotations["kubernetes.io/egress-bandwidth"] = value
    with pytest.raises(InvalidArgument, match="bandwidth"):
        validate(request, Config().runtime, DRIVER)
