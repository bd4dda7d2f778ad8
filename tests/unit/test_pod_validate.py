"""RunPodSandbox request checks (cri/pods/validate.py): what is refused before anything is made."""

from __future__ import annotations

import pytest

from cri.api import api_pb2 as pb
from cri.config import Config
from cri.errors import InvalidArgument, Unimplemented
from cri.pods.validate import validate


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
    spec = validate(_request(), Config(), None)
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
        Config(),
        None,
    )
    assert not spec.own_net and spec.own_ipc and not spec.shared_pid
    assert spec.port_mappings == []


def test_port_mappings_are_normalised() -> None:
    mapping = pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")
    spec = validate(_request(port_mappings=[mapping]), Config(), None)
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
        (_with(linux=_ns(userns_options=pb.UserNamespace(mode=pb.POD))), Unimplemented, "user namespaces"),
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
        validate(request, Config(), None)


def test_userns_node_is_accepted() -> None:
    spec = validate(_request(linux=_ns(userns_options=pb.UserNamespace(mode=pb.NODE))), Config(), None)
    assert spec.namespace_options["userns"]["mode"] == "NODE"


@pytest.mark.parametrize("value", ["fast", "10X", "-1M", "0", "100G"])
def test_bad_bandwidth_annotations_are_refused(value: str) -> None:
    request = _request()
    request.config.annotations["kubernetes.io/egress-bandwidth"] = value
    with pytest.raises(InvalidArgument, match="bandwidth"):
        validate(request, Config(), None)
