"""RunPodSandbox: validate, record the intent, then make the pod step by step with an undo stack.

The pod record is written (``complete=False``) before the first side effect, so that a daemon killed at
any point finds it at restart and removes what was made (recover.py). Each step pushes its undo onto
an ExitStack; a failure unwinds them in reverse and the request leaves nothing behind. Success pops them.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from contextlib import ExitStack
from pathlib import Path

from calyx_base import failpoints
from cri import statedirs
from cri.api import api_pb2 as pb
from cri.pods.deps import PodDeps
from cri.pods.model import NOTREADY, READY, Pod
from cri.pods.teardown import detach_network, pod_ref, quietly, release_namespaces, remove_dir
from cri.pods.validate import RunSpec, validate
from sandbox import namespaces, pidns, podfiles, sysctls, userns

log = logging.getLogger("cri.pods")


def run_pod(deps: PodDeps, request: pb.RunPodSandboxRequest) -> Pod:
    start = time.monotonic()
    spec = validate(request, deps.handlers, deps.cgroups)
    pod_id = secrets.token_hex(32)
    deps.index.reserve_name(spec.metadata.key, pod_id)
    try:
        with deps.index.locked(pod_id):
            pod = _make(deps, spec, pod_id)
            deps.events.pod_changed(pod, pb.CONTAINER_CREATED_EVENT)
            deps.events.pod_changed(pod, pb.CONTAINER_STARTED_EVENT)
    except BaseException:
        deps.index.release_name(spec.metadata.key, pod_id)
        raise
    log.info(
        "pod sandbox running",
        extra={
            "pod_id": pod_id,
            "pod": f"{spec.metadata.namespace}/{spec.metadata.name}",
            "ips": pod.ips,
            "duration_ms": (time.monotonic() - start) * 1000,
        },
    )
    return pod


def _initial(deps: PodDeps, spec: RunSpec, pod_id: str) -> Pod:
    """The pod as planned: every path it will own, before any of them exists."""
    run_root = deps.run_root
    pod_dir = deps.index.pod_dir(pod_id)
    files = podfiles.paths(pod_dir)

    def pin(kind: str, wanted: bool) -> str | None:
        return str(namespaces.pin_path(run_root, kind, pod_id)) if wanted else None

    return Pod(
        id=pod_id,
        metadata=spec.metadata,
        state=NOTREADY,
        created_at=time.time_ns(),
        labels=spec.labels,
        annotations=spec.annotations,
        runtime_handler=spec.runtime_handler,
        log_directory=spec.log_directory,
        cgroup_parent=spec.cgroup_parent,
        hostname=spec.hostname,
        netns_path=pin("net", spec.own_net),
        ipc_ns_path=pin("ipc", spec.own_ipc),
        uts_ns_path=pin("uts", spec.own_net),  # a host-network pod also keeps the host's hostname
        pid_ns_path=str(pidns.pin_path(run_root, pod_id)) if spec.shared_pid else None,
        namespace_options=spec.namespace_options,
        pod_dir=str(pod_dir),
        resolv_conf_path=str(files.resolv_conf),
        hosts_path=str(files.hosts),
        hostname_path=str(files.hostname),
        ips=[],
        linux=spec.linux,
        config=spec.config,
        user_ns_path=str(userns.pin_path(run_root, pod_id)) if spec.own_userns else None,
        network={**deps.networks.plan(), "port_mappings": spec.port_mappings} if spec.own_net else {},
        complete=False,
    )


def _make(deps: PodDeps, spec: RunSpec, pod_id: str) -> Pod:
    pod = _initial(deps, spec, pod_id)
    current = [pod]  # what the undo steps see: the latest record, e.g. with the CNI result
    with ExitStack() as undo:
        deps.index.record(pod)  # the intent, before any side effect
        undo.callback(quietly, "forget record", pod_id, deps.index.erase, pod_id)
        failpoints.hit("pod.after_intent", pod_id=pod_id)

        undo.callback(
            deps.cleanups.attempt, "pod", pod_id, lambda: remove_dir(Path(pod.pod_dir)), "dir"
        )
        podfiles.write(Path(pod.pod_dir), spec.hostname, spec.dns, [])
        if spec.log_directory:
            statedirs.make_log_dir(Path(spec.log_directory), "log_directory", pod_id)

        undo.callback(quietly, "release namespaces", pod_id, release_namespaces, deps.run_root, pod)
        kinds = [k for k, on in (("net", spec.own_net), ("ipc", spec.own_ipc), ("uts", spec.own_net)) if on]
        user_ns = Path(pod.user_ns_path) if pod.user_ns_path else None
        if user_ns is not None:
            mapping = spec.namespace_options["userns"]
            userns.create(
                deps.run_root,
                pod_id,
                userns.IdMap.from_dict(mapping["uids"][0]),
                userns.IdMap.from_dict(mapping["gids"][0]),
                kinds,
                spec.hostname,
            )
        else:
            namespaces.create(deps.run_root, pod_id, kinds, spec.hostname)
        failpoints.hit("pod.after_netns", pod_id=pod_id)
        holder: int | None = None
        if spec.shared_pid:
            holder = pidns.init_pid(pidns.start_holder(deps.run_root, pod_id, user_ns=user_ns))
        sysctls.apply(
            spec.sysctls,
            Path(pod.netns_path) if pod.netns_path else None,
            Path(pod.ipc_ns_path) if pod.ipc_ns_path else None,
            pod_id,
            userns=user_ns,
        )

        if spec.cgroup_parent:
            deps.cgroups.prepare_parent(spec.cgroup_parent)
            undo.callback(
                quietly, "remove cgroup parent", pod_id, deps.cgroups.remove_parent, spec.cgroup_parent
            )

        if spec.own_net:
            networks = deps.networks
            undo.callback(lambda: quietly("detach network", pod_id, detach_network, networks, current[0]))
            record, ips = deps.networks.setup(pod.network, pod_ref(pod))
            record = {**record, "port_mappings": spec.port_mappings}
            pod = current[0] = dataclasses.replace(pod, network=record, ips=ips)
            deps.index.record(pod)
            failpoints.hit("pod.after_network", pod_id=pod_id)
            podfiles.write_hosts(Path(pod.pod_dir), spec.hostname, ips)

        pod = dataclasses.replace(pod, state=READY, complete=True)
        deps.index.save(pod)
        undo.pop_all()
    if holder is not None:
        deps.watch.add(pod_id, holder)
    return pod
