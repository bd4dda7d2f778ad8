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
from cri import lifecycle, statedirs
from cri.api import api_pb2 as pb
from cri.pods.model import KIND, NOTREADY, READY, Pod
from cri.pods.service import PodService
from cri.pods.teardown import detach_network, pod_ref, quietly, release_namespaces, remove_dir
from cri.pods.validate import RunSpec, validate
from sandbox import namespaces, pidns, podfiles, sysctls, userns

log = logging.getLogger("cri.pods")


def run_pod(svc: PodService, request: pb.RunPodSandboxRequest) -> Pod:
    start = time.monotonic()
    spec = validate(request, svc.config, svc.cgroups)
    pod_id = secrets.token_hex(32)
    svc.reserve_name(spec.metadata.key, pod_id)
    try:
        with svc.locked(pod_id):
            pod = _make(svc, spec, pod_id)
            lifecycle.publish_pod(svc.runtime, pod, pb.CONTAINER_CREATED_EVENT)
            lifecycle.publish_pod(svc.runtime, pod, pb.CONTAINER_STARTED_EVENT)
    except BaseException:
        svc.release_name(spec.metadata.key, pod_id)
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


def _initial(svc: PodService, spec: RunSpec, pod_id: str) -> Pod:
    """The pod as planned: every path it will own, before any of them exists."""
    run_root = svc.run_root
    files = podfiles.paths(svc.pod_dir(pod_id))

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
        pod_dir=str(svc.pod_dir(pod_id)),
        resolv_conf_path=str(files.resolv_conf),
        hosts_path=str(files.hosts),
        hostname_path=str(files.hostname),
        ips=[],
        linux=spec.linux,
        config=spec.config,
        user_ns_path=str(userns.pin_path(run_root, pod_id)) if spec.own_userns else None,
        network={**svc.networks.plan(), "port_mappings": spec.port_mappings} if spec.own_net else {},
        complete=False,
    )


def _make(svc: PodService, spec: RunSpec, pod_id: str) -> Pod:
    pod = _initial(svc, spec, pod_id)
    current = [pod]  # what the undo steps see: the latest record, e.g. with the CNI result
    with ExitStack() as undo:
        svc.store.put(KIND, pod_id, pod.to_record())  # the intent, before any side effect
        undo.callback(quietly, "forget record", pod_id, svc.store.delete, KIND, pod_id)
        failpoints.hit("pod.after_intent", pod_id=pod_id)

        undo.callback(
            svc.runtime.cleanups.attempt, "pod", pod_id, lambda: remove_dir(Path(pod.pod_dir)), "dir"
        )
        podfiles.write(Path(pod.pod_dir), spec.hostname, spec.dns, [])
        if spec.log_directory:
            statedirs.make_log_dir(Path(spec.log_directory), "log_directory", pod_id)

        undo.callback(quietly, "release namespaces", pod_id, release_namespaces, svc.run_root, pod)
        kinds = [k for k, on in (("net", spec.own_net), ("ipc", spec.own_ipc), ("uts", spec.own_net)) if on]
        user_ns = Path(pod.user_ns_path) if pod.user_ns_path else None
        if user_ns is not None:
            mapping = spec.namespace_options["userns"]
            userns.create(
                svc.run_root,
                pod_id,
                userns.IdMap.from_dict(mapping["uids"][0]),
                userns.IdMap.from_dict(mapping["gids"][0]),
                kinds,
                spec.hostname,
            )
        else:
            namespaces.create(svc.run_root, pod_id, kinds, spec.hostname)
        failpoints.hit("pod.after_netns", pod_id=pod_id)
        holder: int | None = None
        if spec.shared_pid:
            holder = pidns.init_pid(pidns.start_holder(svc.run_root, pod_id, user_ns=user_ns))
        sysctls.apply(
            spec.sysctls,
            Path(pod.netns_path) if pod.netns_path else None,
            Path(pod.ipc_ns_path) if pod.ipc_ns_path else None,
            pod_id,
            userns=user_ns,
        )

        cgroups = svc.cgroups
        if cgroups is not None and spec.cgroup_parent and hasattr(cgroups, "prepare_parent"):
            cgroups.prepare_parent(spec.cgroup_parent)
            if hasattr(cgroups, "remove_parent"):
                undo.callback(
                    quietly, "remove cgroup parent", pod_id, cgroups.remove_parent, spec.cgroup_parent
                )

        if spec.own_net:
            undo.callback(lambda: quietly("detach network", pod_id, detach_network, svc.networks, current[0]))
            record, ips = svc.networks.setup(pod.network, pod_ref(pod))
            record = {**record, "port_mappings": spec.port_mappings}
            pod = current[0] = dataclasses.replace(pod, network=record, ips=ips)
            svc.store.put(KIND, pod_id, pod.to_record())
            failpoints.hit("pod.after_network", pod_id=pod_id)
            podfiles.write_hosts(Path(pod.pod_dir), spec.hostname, ips)

        pod = dataclasses.replace(pod, state=READY, complete=True)
        svc.save(pod)
        undo.pop_all()
    if holder is not None:
        svc.watch.add(pod_id, holder)
    return pod
