"""What a Calyx daemon has on the machine, compared with what it lists: for crash and recovery tests.

``audit(cx)`` returns every inconsistency: an artifact (mount, namespace pin, veth, iptables or
ip6tables rule, IPv4 or IPv6 lease, cgroup, runc state, conmon, container or pod dir, exit file, blob,
layer) that no listed object owns, or a listed object missing a piece it must have. ``leftovers(cx)``
is everything still there, for the end of a test when every object has been removed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cri.api import api_pb2 as pb
from tests import cgroup_files
from tests.container_fixtures import Cx

HEX64 = re.compile(r"[0-9a-f]{64}")


def _sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30).stdout


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def runc_states(cx: Cx) -> set[str]:
    return set(_sh("runc", "--root", str(cx.daemon.run_root / "runc"), "list", "-q").split())


def conmons(cx: Cx) -> dict[int, str]:
    """conmon processes of this daemon (by its state dirs) -> the container id they monitor."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and str(cx.daemon.run_root).encode() in b" ".join(argv):
            found[int(proc.name)] = argv[argv.index(b"-c") + 1].decode() if b"-c" in argv else "?"
    return found


def mounts(cx: Cx) -> list[str]:
    base = str(cx.daemon.base)
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if base in line]


def veths(cx: Cx) -> set[str]:
    out = _sh("ip", "-o", "link", "show", "master", cx.net.bridge)
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def all_rules() -> list[str]:
    """Every iptables and ip6tables rule on the host (the built-in network has both for dual-stack)."""
    return _sh("iptables-save").splitlines() + _sh("ip6tables-save").splitlines()


def iptables_lines(cx: Cx) -> list[str]:
    return [line for line in all_rules() if cx.net.bridge in line]


def container_cgroups(cx: Cx) -> set[str]:
    found = set()
    for parent in cx.parents:
        for d in cgroup_files.children(parent):
            match = HEX64.search(d.name)
            if d.is_dir() and match:
                found.add(match.group(0))
    return found


def blob_files(cx: Cx) -> set[str]:
    return _names(cx.daemon.root / "images" / "blobs" / "sha256")


def layer_dirs(cx: Cx) -> set[str]:
    return {n for n in _names(cx.daemon.root / "images" / "layers") if not n.endswith(".usage")}


def _reported_ips(cx: Cx, pod_id: str) -> set[str]:
    network = cx.rt.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=30
    ).status.network
    return {network.ip, *(extra.ip for extra in network.additional_ips)} - {""}


def audit(cx: Cx) -> list[str]:
    """Inconsistencies between what the daemon lists and what is on the machine (empty when whole)."""
    rt, d = cx.rt, cx.daemon
    pods = {p.id: p for p in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items}
    ctrs = {c.id: c for c in rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers}
    images = d.images.ListImages(pb.ListImagesRequest(), timeout=30).images
    ready = {i for i, p in pods.items() if p.state == pb.SANDBOX_READY}
    live = {i for i, c in ctrs.items() if c.state in (pb.CONTAINER_CREATED, pb.CONTAINER_RUNNING)}
    problems: list[str] = []

    def expect(kind: str, have: set[str], allowed: set[str], required: set[str] | None = None) -> None:
        problems.extend(f"{kind} without owner: {x}" for x in sorted(have - allowed))
        problems.extend(f"{kind} missing for: {x}" for x in sorted((required or set()) - have))

    # A NOTREADY pod needs no files any more (a removal that failed after them is retried by kubelet;
    # one a crash interrupted is finished by recovery).
    expect("pod dir", _names(d.root / "pods"), set(pods), ready)
    for kind in ("net", "ipc", "uts", "pid", "user"):
        expect(f"{kind} pin", _names(d.run_root / "ns" / kind), ready)
    netns_pods = {i for i in ready if (d.run_root / "ns" / "net" / i).exists()}
    if cx.net.ipam_dir is None:  # the built-in network: veths named after the pod, leases in the store
        expect("veth", {v[3:] for v in veths(cx)}, {i[:12] for i in netns_pods}, {i[:12] for i in netns_pods})
        leases = {str(lease.get("pod_id")) for lease in cx.net.leases.values()}
        # One lease per IP family of the pod (two when dual-stack): exactly the addresses it reports.
        for pod_id in netns_pods:
            leased = {ip for ip, lease in cx.net.leases.items() if lease.get("pod_id") == pod_id}
            if leased != _reported_ips(cx, pod_id):
                problems.append(
                    f"leases {sorted(leased)} of {pod_id} are not its IPs {_reported_ips(cx, pod_id)}"
                )
    else:  # CNI bridge + host-local: veths named by the plugin, a lease file per address
        if len(veths(cx)) != len(netns_pods):
            problems.append(f"{len(veths(cx))} veths on {cx.net.bridge} for {len(netns_pods)} pods")
        leases = set()
        if cx.net.ipam_dir.is_dir():
            for f in cx.net.ipam_dir.iterdir():
                if f.name[:1].isdigit():
                    leases.add(f.read_text().split()[0])
    expect("lease", leases, netns_pods, netns_pods)
    known = set(HEX64.findall(d.log()))  # every id this daemon ever logged (also of pods it lost)
    for line in all_rules():
        stale = [i for i in HEX64.findall(line) if i in known and i not in ready]
        if stale:
            problems.append(f"iptables rule of a pod that is not ready: {line}")
    for line in iptables_lines(cx):
        owner = re.search(r"[0-9a-f]{16}", line.split(cx.net.bridge, 1)[-1])
        if owner and not any(i.startswith(owner.group(0)) for i in ready):
            problems.append(f"iptables rule without owner: {line}")
    for point in mounts(cx):
        ids = HEX64.findall(point)
        if "/containers/" in point and ("/idmapped/" in point or "/image-volumes/" in point):
            # staging mounts never outlive CreateContainer (cri/containers/staging.py)
            problems.append(f"staging mount left: {point}")
        elif "/ns/" in point:
            ok = bool(ids) and ids[0] in ready
        elif "/containers/" in point:
            ok = bool(ids) and ids[0] in ctrs
        else:
            ok = bool(ids) and (ids[0] in pods or ids[0] in ctrs)
        if not ok:
            problems.append(f"mount without owner: {point}")
    expect("container dir", _names(d.root / "containers"), set(ctrs), live)
    # runc keeps a stopped container's state until RemoveContainer deletes it.
    expect("runc state", runc_states(cx), set(ctrs), live)
    expect("conmon", set(conmons(cx).values()), live, live)
    expect("exit file", _names(d.run_root / "exits"), set(ctrs))
    expect("container cgroup", container_cgroups(cx), set(ctrs))
    for c in ctrs.values():
        if c.pod_sandbox_id not in pods:
            problems.append(f"container {c.id} of a pod that is not listed")
    if not images:
        expect("blob", blob_files(cx), set())
        expect("layer dir", layer_dirs(cx), set())
    expect("ingest file", _names(d.root / "images" / "ingest"), set())
    return problems


def leftovers(cx: Cx) -> list[str]:
    """What is still on the machine once every object was removed (audit finds no owner for any)."""
    listed = [p.id for p in cx.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items]
    listed += [c.id for c in cx.rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers]
    return [f"still listed: {i}" for i in listed] + audit(cx)
