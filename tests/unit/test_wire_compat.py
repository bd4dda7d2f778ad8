"""Wire compatibility of proto/api.proto with an independent copy of the CRI v1 API.

The reference is the PyPI package ``container-runtime-interface-api`` (module ``cri_api.v1``, a test-only
dependency). It declares the same protobuf package (``runtime.v1``) as our stubs, so both cannot live in
one descriptor pool: a subprocess imports it and hands back its serialized FileDescriptorProto, and the
comparison works on plain FileDescriptorProto objects.

Each API element (service, method, message, field, oneof, enum, enum value, option) is flattened to one
line "kind full.name" -> "facts". Everything the reference has must be in ours with the same facts. What
the package (an older API) lacks and Kubernetes 1.36 has is listed in ``ADDED_SINCE_REFERENCE`` with its
facts, so an accidental extra or mistyped field fails the test just like a wrong number does.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2 as d
from google.protobuf.message import Message

from cri.api import api_pb2

REFERENCE_MODULE = "cri_api.v1.api_pb2"

# Printed by a separate interpreter so that the reference never enters this process's descriptor pool.
_DUMP_REFERENCE = (
    f"import base64, {REFERENCE_MODULE} as m; print(base64.b64encode(m.DESCRIPTOR.serialized_pb).decode())"
)

# Kubernetes 1.36 (cri-api v0.36) elements the reference package does not have yet.
ADDED_SINCE_REFERENCE: dict[str, str] = {
    # Server-streaming variants of the list calls, each with its own request/response pair.
    "rpc RuntimeService.StreamPodSandboxes": (
        "StreamPodSandboxesRequest -> stream StreamPodSandboxesResponse"
    ),
    "rpc RuntimeService.StreamContainers": ("StreamContainersRequest -> stream StreamContainersResponse"),
    "rpc RuntimeService.StreamContainerStats": (
        "StreamContainerStatsRequest -> stream StreamContainerStatsResponse"
    ),
    "rpc RuntimeService.StreamPodSandboxStats": (
        "StreamPodSandboxStatsRequest -> stream StreamPodSandboxStatsResponse"
    ),
    "rpc RuntimeService.StreamPodSandboxMetrics": (
        "StreamPodSandboxMetricsRequest -> stream StreamPodSandboxMetricsResponse"
    ),
    "rpc ImageService.StreamImages": ("StreamImagesRequest -> stream StreamImagesResponse"),
    "message StreamPodSandboxesRequest": "message",
    "field StreamPodSandboxesRequest.filter": "optional PodSandboxFilter = 1",
    "message StreamPodSandboxesResponse": "message",
    "field StreamPodSandboxesResponse.pod_sandboxes": "repeated PodSandbox = 1",
    "message StreamContainersRequest": "message",
    "field StreamContainersRequest.filter": "optional ContainerFilter = 1",
    "message StreamContainersResponse": "message",
    "field StreamContainersResponse.containers": "repeated Container = 1",
    "message StreamContainerStatsRequest": "message",
    "field StreamContainerStatsRequest.filter": "optional ContainerStatsFilter = 1",
    "message StreamContainerStatsResponse": "message",
    "field StreamContainerStatsResponse.container_stats": "repeated ContainerStats = 1",
    "message StreamPodSandboxStatsRequest": "message",
    "field StreamPodSandboxStatsRequest.filter": "optional PodSandboxStatsFilter = 1",
    "message StreamPodSandboxStatsResponse": "message",
    "field StreamPodSandboxStatsResponse.pod_sandbox_stats": ("repeated PodSandboxStats = 1"),
    "message StreamPodSandboxMetricsRequest": "message",
    "message StreamPodSandboxMetricsResponse": "message",
    "field StreamPodSandboxMetricsResponse.pod_sandbox_metrics": ("repeated PodSandboxMetrics = 1"),
    "message StreamImagesRequest": "message",
    "field StreamImagesRequest.filter": "optional ImageFilter = 1",
    "message StreamImagesResponse": "message",
    "field StreamImagesResponse.images": "repeated Image = 1",
    # Newer fields of existing messages.
    "field ImageSpec.image_ref": "optional string = 20",
    "field RuntimeFeatures.user_namespaces_host_network": "optional bool = 2",
    # Registry secrets are marked for redaction in debug output.
    "option field AuthConfig.password debug_redact": "True",
    "option field AuthConfig.auth debug_redact": "True",
    "option field AuthConfig.identity_token debug_redact": "True",
    "option field AuthConfig.registry_token debug_redact": "True",
}

# Elements whose facts changed since the reference, as (reference facts, our facts). KeyValue.value became
# bytes in cri-api v0.36.2 (env values need not be UTF-8); string and bytes share one wire encoding.
CHANGED_SINCE_REFERENCE: dict[str, tuple[str, str]] = {
    "field KeyValue.value": ("optional string = 2", "optional bytes = 2"),
}


def _type_name(field: d.FieldDescriptorProto, pkg: str) -> str:
    if field.type_name:
        return field.type_name.removeprefix(f".{pkg}.")
    return d.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()


def _label(field: d.FieldDescriptorProto) -> str:
    return d.FieldDescriptorProto.Label.Name(field.label).removeprefix("LABEL_").lower()


def _options(out: dict[str, str], key: str, options: Message) -> None:
    for option, value in options.ListFields():
        out[f"option {key} {option.name}"] = str(value)


def flatten(fdp: d.FileDescriptorProto) -> dict[str, str]:
    """Every element of the file as "kind name" -> a string holding all its facts.

    Names and type names are relative to the file's package (checked once, under "file").
    """
    pkg = fdp.package
    out: dict[str, str] = {"file": f"package={pkg} syntax={fdp.syntax}"}
    _options(out, "file", fdp.options)
    map_entries: set[str] = set()

    def enum(prefix: str, e: d.EnumDescriptorProto) -> None:
        key = f"enum {prefix}{e.name}"
        out[key] = "enum"
        _options(out, key, e.options)
        for value in e.value:
            vkey = f"enum_value {prefix}{e.name}.{value.name}"
            out[vkey] = str(value.number)
            _options(out, vkey, value.options)

    def message(prefix: str, m: d.DescriptorProto) -> None:
        name = f"{prefix}{m.name}"
        key = f"message {name}"
        out[key] = "map_entry" if m.options.map_entry else "message"
        if m.options.map_entry:
            map_entries.add(name)
        reserved = [f"{r.start}-{r.end}" for r in m.reserved_range] + list(m.reserved_name)
        if reserved or m.extension_range:
            out[key] += f" reserved={reserved} extensions={len(m.extension_range)}"
        _options(out, key, m.options)
        for oneof in m.oneof_decl:
            out[f"oneof {name}.{oneof.name}"] = "oneof"
        for nested in m.nested_type:
            message(f"{name}.", nested)
        for nested_enum in m.enum_type:
            enum(f"{name}.", nested_enum)
        for field in m.field:
            fkey = f"field {name}.{field.name}"
            facts = f"{_label(field)} {_type_name(field, pkg)} = {field.number}"
            if field.proto3_optional:
                facts += " proto3_optional"
            if field.HasField("oneof_index") and not field.proto3_optional:
                facts += f" oneof={m.oneof_decl[field.oneof_index].name}"
            if field.default_value or field.extendee:
                facts += f" default={field.default_value!r} extendee={field.extendee}"
            out[fkey] = facts
            _options(out, fkey, field.options)

    for e in fdp.enum_type:
        enum("", e)
    for m in fdp.message_type:
        message("", m)
    for service in fdp.service:
        skey = f"service {service.name}"
        out[skey] = "service"
        _options(out, skey, service.options)
        for method in service.method:
            mkey = f"rpc {service.name}.{method.name}"
            client = "stream " if method.client_streaming else ""
            server = "stream " if method.server_streaming else ""
            request = method.input_type.removeprefix(f".{pkg}.")
            response = method.output_type.removeprefix(f".{pkg}.")
            out[mkey] = f"{client}{request} -> {server}{response}"
            _options(out, mkey, method.options)
    # Map-ness is a property of the field: mark fields whose type is a map entry.
    for key, facts in list(out.items()):
        if key.startswith("field ") and facts.split(" ")[1] in map_entries:
            out[key] = facts + " map"
    return out


def compare(reference: dict[str, str], ours: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Problems (reference elements missing or different in ours) and our elements it lacks."""
    problems = []
    for key, facts in reference.items():
        expected = facts
        if key in CHANGED_SINCE_REFERENCE:
            was, now = CHANGED_SINCE_REFERENCE[key]
            if facts != was:
                problems.append(f"{key}: reference has {facts!r}, CHANGED_SINCE_REFERENCE expects {was!r}")
            expected = now
        if key not in ours:
            problems.append(f"{key}: missing (reference: {facts})")
        elif ours[key] != expected:
            problems.append(f"{key}: ours {ours[key]!r}, expected {expected!r}")
    extra = {key: facts for key, facts in ours.items() if key not in reference}
    return problems, extra


@pytest.fixture(scope="module")
def reference() -> d.FileDescriptorProto:
    done = subprocess.run(
        [sys.executable, "-c", _DUMP_REFERENCE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"importing {REFERENCE_MODULE} failed: {done.stderr}"
    return d.FileDescriptorProto.FromString(base64.b64decode(done.stdout))


@pytest.fixture(scope="module")
def ours() -> d.FileDescriptorProto:
    return d.FileDescriptorProto.FromString(api_pb2.DESCRIPTOR.serialized_pb)


def test_reference_is_the_cri_v1_api(reference: d.FileDescriptorProto) -> None:
    flat = flatten(reference)
    assert flat["file"] == "package=runtime.v1 syntax=proto3"
    assert {s.name for s in reference.service} == {"RuntimeService", "ImageService"}
    # A sample of facts proves the flattening sees fields, maps, enums and streaming.
    assert flat["field ContainerConfig.CDI_devices"] == "repeated CDIDevice = 17"
    assert flat["field PodSandboxConfig.labels"].endswith(" map")
    assert flat["enum_value Signal.SIGRTMAX"] == "65"
    assert flat["rpc RuntimeService.GetContainerEvents"].endswith("-> stream ContainerEventResponse")
    assert len(flat) > 800


def test_everything_in_the_reference_matches_ours_exactly(
    reference: d.FileDescriptorProto, ours: d.FileDescriptorProto
) -> None:
    problems, _ = compare(flatten(reference), flatten(ours))
    assert problems == []


def test_what_ours_adds_is_exactly_the_known_1_36_additions(
    reference: d.FileDescriptorProto, ours: d.FileDescriptorProto
) -> None:
    _, extra = compare(flatten(reference), flatten(ours))
    for key, facts in sorted(extra.items()):
        print(f"added since {REFERENCE_MODULE}: {key}: {facts}")
    assert extra == ADDED_SINCE_REFERENCE


@pytest.mark.parametrize(
    ("element", "breakage"),
    [
        ("field ContainerConfig.stop_signal", "number"),
        ("field Mount.image_sub_path", "name"),
        ("enum_value NamespaceMode.TARGET", "number"),
        ("rpc RuntimeService.GetContainerEvents", "streaming"),
        ("field PodSandboxConfig.labels", "map"),
        ("field LinuxContainerSecurityContext.apparmor_profile", "deprecated"),
    ],
)
def test_the_comparison_catches_a_broken_element(
    reference: d.FileDescriptorProto, ours: d.FileDescriptorProto, element: str, breakage: str
) -> None:
    """Break one fact in a copy of our descriptor: the comparison must report it."""
    broken = d.FileDescriptorProto()
    broken.CopyFrom(ours)
    kind, name = element.split(" ")
    parts = name.split(".")
    if kind == "rpc":
        service = next(s for s in broken.service if s.name == parts[0])
        next(m for m in service.method if m.name == parts[1]).server_streaming = False
    elif kind == "enum_value":
        enum = next(e for e in broken.enum_type if e.name == parts[0])
        next(v for v in enum.value if v.name == parts[1]).number = 99
    else:
        message = next(m for m in broken.message_type if m.name == parts[0])
        field = next(f for f in message.field if f.name == parts[1])
        if breakage == "number":
            field.number = 99
        elif breakage == "name":
            field.name = "image_subpath"
        elif breakage == "map":
            field.type_name = ".runtime.v1.KeyValue"
        else:
            field.options.ClearField("deprecated")
    problems, _ = compare(flatten(reference), flatten(broken))
    assert any(element in p for p in problems), problems
