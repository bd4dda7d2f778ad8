"""Requests for every RPC, generated from the CRI API's protobuf descriptors.

``plan(descriptor)`` walks a message type recursively and draws a *plan*: a dict of field name -> value
(nested dicts for messages, lists for repeated fields, dicts for maps), each field present or not, with
a strategy per field type (hostile strings, integers at the edges of their type, enum values known and
unknown) unless ``OVERRIDES`` names one for the field (ids of live objects, paths into the scratch tree,
harmless commands...). ``build`` turns a plan into the message once the ``World`` resolves its Refs.

``friendly_pod`` and ``friendly_container`` are valid requests with a few fields taken from a generic
plan (mutation-style), so that runs get past the validators into the deep paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from cri.api import api_pb2 as pb
from tests.fuzz import values as v
from tests.fuzz.values import Ref
from tests.fuzz.world import SCRATCH_NAMES, World

F = FieldDescriptor
SERVICES = [pb.DESCRIPTOR.services_by_name["RuntimeService"], pb.DESCRIPTOR.services_by_name["ImageService"]]
METHODS: dict[str, MethodDescriptor] = {m.name: m for s in SERVICES for m in s.methods}
MAX_DEPTH = 6

# --- per-field strategies -----------------------------------------------------------------------------


def _pod_id() -> st.SearchStrategy[Any]:
    return st.one_of(v.id_ref("pod"), v.id_ref("ctr"), v.text())


def _ctr_id() -> st.SearchStrategy[Any]:
    return st.one_of(v.id_ref("ctr"), v.id_ref("pod"), v.text())


def _ref(kind: str, *forms: str) -> st.SearchStrategy[Ref]:
    return st.builds(Ref, st.just(kind), st.integers(0, 30), st.sampled_from(forms or ("full",)))


def _parts(names: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.one_of(st.sampled_from(names), v.components()), max_size=3).map(tuple)


def _scratch() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(Ref, st.just("scratch"), parts=_parts(SCRATCH_NAMES)),
        v.text(),
    )


def _command() -> st.SearchStrategy[list[str]]:
    """Only what values.harmless allows; garbage comes as a missing program or as extra arguments."""
    tails = st.lists(v.text(), max_size=3)
    return st.one_of(
        st.just(v.LOOP),
        st.sampled_from(v.SCRIPTS).map(lambda s: ["sh", "-c", s]),
        st.builds(lambda p, t: [p, *t], st.sampled_from(sorted(v.EXTENSIBLE)), tails),
        st.sampled_from(v.FIXED),
        st.builds(lambda p, s, t: [p + s, *t], st.sampled_from(v.NOSUCH), v.text(), tails),
        st.just([]),
    )


def _sysctls() -> st.SearchStrategy[dict[str, str]]:
    names = [
        "net.core.somaxconn",
        "net.ipv4.ping_group_range",
        "net/ipv4/conf/all/log_martians",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "fs.mqueue.msg_max",
        "kernel.sem",
        "kernel.hostname",
        "net.ipv4.conf.lo.cxfz",
        "vm.swappiness",
        "net..ipv4",
        "net.ipv4.ping_group_range=0 1",
    ]
    values = st.one_of(st.sampled_from(["0", "1", "0 1", "1 0", "65535", "a=b", "1\n", ""]), v.text())
    return st.dictionaries(st.one_of(st.sampled_from(names), v.text()), values, max_size=3)


def _annotations() -> st.SearchStrategy[dict[str, str]]:
    keys = ["kubernetes.io/ingress-bandwidth", "kubernetes.io/egress-bandwidth", "io.kubernetes.cri.x"]
    values = st.one_of(st.sampled_from(["1M", "10k", "0", "-1", "1e100", "1Gi", "100"]), v.text())
    return st.dictionaries(st.one_of(st.sampled_from(keys), v.text()), values, max_size=3)


def _pick(*fixed: Any) -> Callable[[], st.SearchStrategy[Any]]:
    return lambda: st.one_of(st.sampled_from(list(fixed)), v.text())


OVERRIDES: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
    "*.pod_sandbox_id": _pod_id,
    "*.container_id": _ctr_id,
    "NamespaceOption.target_id": _ctr_id,
    "PodSandboxFilter.id": _pod_id,
    "PodSandboxStatsFilter.id": _pod_id,
    "ContainerFilter.id": _ctr_id,
    "ContainerStatsFilter.id": _ctr_id,
    "ImageSpec.image": lambda: st.one_of(
        _ref("image", "full", "full", "prefix", "upper", "extended", "truncated", "padded"),
        _ref("pull"),
        v.text(),
    ),
    "Mount.host_path": _scratch,
    "Device.host_path": lambda: st.one_of(_ref("device"), v.text()),
    "Device.permissions": _pick("rwm", "r", "rw", "", "x", "mwr"),
    "PodSandboxConfig.log_directory": lambda: st.one_of(
        st.builds(Ref, st.just("logdir"), parts=_parts(["p", "q"])), v.text()
    ),
    "ContainerConfig.log_path": lambda: st.one_of(
        st.sampled_from(["c.log", "d/c.log", "../c.log", "", "d/", "./c.log"]), v.text(), _scratch()
    ),
    "LinuxPodSandboxConfig.cgroup_parent": lambda: st.one_of(
        st.builds(Ref, st.just("cgroup"), parts=_parts(["pod", "cgroup.procs", "cpu.shares", "tasks"])),
        st.sampled_from(["", "relative", "kubepods.slice", "kubepods-pod.slice"]),
        v.text(),
    ),
    "ContainerConfig.command": _command,
    "ContainerConfig.args": lambda: st.one_of(_command(), st.lists(v.text(), max_size=3)),
    "ExecSyncRequest.cmd": _command,
    "ExecRequest.cmd": _command,
    "ExecSyncRequest.timeout": lambda: st.sampled_from([0, 1, 2, 5, -1, 2**63 - 1, -(2**63)]),
    "StopContainerRequest.timeout": lambda: st.sampled_from([0, 0, 1, 2, -1, 30, 2**63 - 1, -(2**63)]),
    "CheckpointContainerRequest.timeout": lambda: v.integer("int64"),
    "SecurityProfile.localhost_ref": lambda: st.one_of(_ref("seccomp"), v.text()),
    "*.seccomp_profile_path": lambda: st.one_of(
        st.sampled_from(
            ["runtime/default", "docker/default", "unconfined", "", "localhost/", "localhost/rel"]
        ),
        _ref("seccomp", "localhost"),
        v.text(),
    ),
    "NetworkConfig.pod_cidr": lambda: st.one_of(_ref("cidr"), v.text()),
    "PortMapping.host_port": lambda: st.one_of(_ref("port"), st.sampled_from([0, -1, 65536, 2**31 - 1])),
    "PortMapping.host_ip": _pick(
        "", "0.0.0.0", "127.0.0.1", "::", "::1", "fe80::1%lo", "1.2.3.4", "256.0.0.1"
    ),
    "LinuxPodSandboxConfig.sysctls": _sysctls,
    "*.annotations": _annotations,
    "PodSandboxMetadata.name": lambda: st.one_of(v.token(), v.text()),
    "PodSandboxMetadata.uid": lambda: st.one_of(v.token(), v.text()),
    "PodSandboxMetadata.namespace": lambda: st.one_of(v.token(), v.text()),
    "ContainerMetadata.name": lambda: st.one_of(v.token(), v.text()),
    "*.runtime_handler": _pick("", "runc", "nosuch", "RUNC"),
    "Capability.add_capabilities": lambda: st.lists(
        _pick("CAP_SYS_ADMIN", "NET_RAW", "ALL", "all", "CAP_NOPE")()
    ),
    "Capability.drop_capabilities": lambda: st.lists(_pick("CAP_CHOWN", "ALL", "NET_RAW", "cap_nope")()),
    "Capability.add_ambient_capabilities": lambda: st.lists(
        _pick("CAP_NET_BIND_SERVICE", "ALL", "CAP_NOPE")()
    ),
    "*.run_as_username": _pick("root", "www-data", "nobody", "nosuch", "1000"),
    "LinuxContainerResources.cpuset_cpus": _pick("0", "0-1", "1", "0-1000", "", "a", "0,1", "1-0"),
    "LinuxContainerResources.cpuset_mems": _pick("0", "0-1", "1", "", "9"),
    "HugepageLimit.page_size": _pick("2MB", "1GB", "64KB", "2M", ""),
    "KeyValue.key": lambda: st.one_of(st.from_regex(r"[A-Za-z_]\w{0,30}", fullmatch=True), v.text()),
    "*.working_dir": _pick("/", "/tmp", "/nonexistent/dir", "relative", "/etc/passwd", "/proc/x"),
    "DNSConfig.servers": lambda: st.lists(_pick("10.96.0.10", "::1", "1.2.3.4", "not-an-ip")(), max_size=4),
}


def _override(field: FieldDescriptor) -> Callable[[], st.SearchStrategy[Any]] | None:
    owner = field.containing_type.name
    exact = OVERRIDES.get(f"{owner}.{field.name}")
    if exact is not None or (field.type == F.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry):
        return exact
    wildcard = OVERRIDES.get(f"*.{field.name}")  # for string fields and maps of strings only
    string_map = field.type == F.TYPE_MESSAGE
    return wildcard if field.type == F.TYPE_STRING or string_map else None


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == F.TYPE_STRING:
        return v.text()
    if t == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=40), v.huge().map(lambda s: s.encode()))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return v.integer("int32")
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return v.integer("int64")
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return v.integer("uint32")
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return v.integer("uint64")
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == F.TYPE_FLOAT else 64)
    if t == F.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from([-1, max(known) + 1, 2**31 - 1, -(2**31)]))
    raise TypeError(f"no strategy for field type {t} of {field.full_name}")


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    custom = _override(field)
    if custom is not None:
        return custom()
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key), _scalar(value), max_size=4)
    one = plan(field.message_type, depth + 1) if field.type == F.TYPE_MESSAGE else _scalar(field)
    if field.is_repeated:
        return st.lists(one, max_size=4)
    return one


_PLANS: dict[tuple[str, int], st.SearchStrategy[dict[str, Any]]] = {}


def plan(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """A plan of ``descriptor``: every field optional; nested messages up to MAX_DEPTH."""
    key = (descriptor.full_name, depth)
    if key not in _PLANS:
        fields = {} if depth >= MAX_DEPTH else {f.name: _field(f, depth) for f in descriptor.fields}
        _PLANS[key] = st.fixed_dictionaries({}, optional=fields)
    return _PLANS[key]


def any_call() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """(method name, plan of its request) for any RPC of both services."""
    return st.sampled_from(sorted(METHODS)).flatmap(
        lambda name: st.tuples(st.just(name), plan(METHODS[name].input_type))
    )


# --- valid requests with a few fuzzed fields ------------------------------------------------------


def _leaves(
    tree: dict[str, Any], descriptor: Descriptor, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """(field path, value) of every leaf of a plan: scalars, lists and maps; messages are walked."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for name, value in tree.items():
        field = descriptor.fields_by_name[name]
        nested = field.type == F.TYPE_MESSAGE and not field.is_repeated
        if nested and not field.message_type.GetOptions().map_entry and value:
            out += _leaves(value, field.message_type, (*prefix, name))
        else:
            out.append(((*prefix, name), value))
    return out


def _overlay(base: dict[str, Any], leaves: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    for path, value in leaves:
        node = base
        for name in path[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return base


@st.composite
def mutated(
    draw: st.DrawFn, skeleton: st.SearchStrategy[dict[str, Any]], descriptor: Descriptor, most: int
) -> dict[str, Any]:
    """``skeleton`` (a valid plan) with up to ``most`` leaves of a generic plan laid over it."""
    base = draw(skeleton)
    leaves = _leaves(draw(plan(descriptor)), descriptor)
    if not leaves:
        return base
    chosen = draw(st.lists(st.sampled_from(leaves), max_size=most, unique_by=lambda leaf: leaf[0]))
    return _overlay(base, chosen)


def friendly_pod() -> st.SearchStrategy[dict[str, Any]]:
    modes = st.fixed_dictionaries(
        {
            "network": st.sampled_from([pb.NODE, pb.NODE, pb.POD]),
            "pid": st.sampled_from([pb.CONTAINER, pb.POD, pb.NODE]),
            "ipc": st.sampled_from([pb.POD, pb.NODE]),
        }
    )
    skeleton = st.fixed_dictionaries(
        {
            "metadata": st.fixed_dictionaries(
                {
                    "name": st.from_regex(r"p[a-z0-9]{1,8}", fullmatch=True),
                    "uid": st.from_regex(r"u[a-z0-9]{1,8}", fullmatch=True),
                    "namespace": st.just("cxfz"),
                    "attempt": st.integers(0, 2),
                }
            ),
            "log_directory": st.builds(Ref, st.just("logdir"), parts=_parts(["p", "q"])),
            "linux": st.fixed_dictionaries(
                {
                    "cgroup_parent": st.builds(
                        Ref, st.just("cgroup"), parts=st.sampled_from([(), ("a",), ("b", "c")])
                    ),
                    "security_context": st.fixed_dictionaries(
                        {"namespace_options": modes}, optional={"privileged": st.booleans()}
                    ),
                }
            ),
        },
        optional={
            "port_mappings": st.lists(
                st.fixed_dictionaries(
                    {"container_port": st.sampled_from([80, 8080]), "host_port": _ref("port")},
                    optional={"protocol": st.sampled_from([pb.TCP, pb.UDP, pb.SCTP])},
                ),
                max_size=2,
            ),
        },
    )
    return mutated(skeleton, pb.PodSandboxConfig.DESCRIPTOR, 2)


def friendly_container() -> st.SearchStrategy[dict[str, Any]]:
    skeleton = st.fixed_dictionaries(
        {
            "metadata": st.fixed_dictionaries(
                {"name": st.from_regex(r"c[a-z0-9]{1,6}", fullmatch=True), "attempt": st.integers(0, 1)}
            ),
            "image": st.fixed_dictionaries({"image": _ref("image")}),
            "command": st.one_of(st.just(v.LOOP), st.just(v.LOOP), _command()),
            "log_path": st.sampled_from(["c.log", "d/c.log"]),
        }
    )
    return mutated(skeleton, pb.ContainerConfig.DESCRIPTOR, 3)


# --- plans to messages -------------------------------------------------------------------------------


def build(descriptor: Descriptor, tree: dict[str, Any], world: World) -> Message:
    message = GetMessageClass(descriptor)()
    for name, value in tree.items():
        field = descriptor.fields_by_name[name]
        _set(message, field, value, world)
    return message


def _value(field: FieldDescriptor, value: Any, world: World) -> Any:
    if isinstance(value, Ref):
        value = world.resolve(value)
    if field.type == F.TYPE_STRING and not isinstance(value, str):
        value = str(value)
    return value


def _set(message: Message, field: FieldDescriptor, value: Any, world: World) -> None:
    target = getattr(message, field.name)
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        key_field = field.message_type.fields_by_name["key"]
        for k, item in value.items():
            target[_value(key_field, k, world)] = _value(value_field, item, world)
    elif field.type == F.TYPE_MESSAGE and field.is_repeated:
        for item in value:
            target.add().CopyFrom(build(field.message_type, item, world))
    elif field.type == F.TYPE_MESSAGE:
        target.CopyFrom(build(field.message_type, value, world))
        target.SetInParent()
    elif field.is_repeated:
        target.extend(_value(field, item, world) for item in value)
    else:
        setattr(message, field.name, _value(field, value, world))
