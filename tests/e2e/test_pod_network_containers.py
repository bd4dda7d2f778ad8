"""Containers on the pod network, end to end: a pod's containers use its netns (address, hostname,
DNS), reach other pods over the bridge, and a hostPort reaches a server in a container. Stopping the
pod stops its containers; removing it removes them and leaves nothing on the host."""

from __future__ import annotations

import time
import urllib.request

from cri.api import api_pb2 as pb
from tests import container_fixtures
from tests.container_fixtures import Cx
from tests.net_fixtures import free_port, host_address, iptables_save, pod_traces

cx = container_fixtures.cx

SERVER = ["sh", "-c", "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www"]


def _ip(cx: Cx, pod_id: str) -> str:
    return cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip


def _wait_http(cx: Cx, client: str, address: str) -> str:
    """An HTTP GET from a container with busybox nc (the image's static wget crashes); polls until the
    server in the other container answers, since it starts asynchronously."""
    deadline = time.monotonic() + 60
    while True:
        result = cx.exec(client, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} 8080")
        if (result.exit_code == 0 and result.stdout) or time.monotonic() > deadline:
            return result.stdout.decode().split("\r\n\r\n", 1)[-1]
        time.sleep(0.1)


def test_containers_use_the_pod_network_reach_other_pods_and_serve_host_ports(cx: Cx) -> None:
    host_port = free_port()
    web_pod = cx.pod(linux=pb.LinuxPodSandboxConfig(), host_network=False)
    # the fixture's pod has no port mappings: make a second pod that has one, as kubelet would
    config = pb.PodSandboxConfig()
    config.CopyFrom(web_pod[1])
    config.metadata.name += "-ports"
    config.metadata.uid += "-ports"
    config.hostname = "web-0"
    config.dns_config.CopyFrom(pb.DNSConfig(servers=["10.96.0.10"], searches=["calyx.svc"]))
    config.port_mappings.append(pb.PortMapping(container_port=8080, host_port=host_port))
    web_id = cx.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
    cx.pods.append(web_id)
    web = (web_id, config)
    client_pod = cx.pod(linux=pb.LinuxPodSandboxConfig(), host_network=False)

    server = cx.run(web, "web", SERVER)
    client = cx.run(client_pod, "client", ["sleep", "1000"])
    web_ip, client_ip = _ip(cx, web_id), _ip(cx, client_pod[0])
    # the pod's status carries its containers' statuses (kubelet's evented PLEG reads them there)
    pod_status = cx.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=web_id))
    assert [(c.id, c.state) for c in pod_status.containers_statuses] == [(server, pb.CONTAINER_RUNNING)]
    assert pod_status.timestamp > 0

    # the container is in the pod's netns, with the pod's address, hostname and DNS
    assert f"inet {web_ip}/" in cx.output(server, "ip", "-4", "addr", "show", "eth0")
    assert cx.output(server, "hostname").strip() == "web-0"
    assert cx.output(server, "cat", "/etc/resolv.conf") == "nameserver 10.96.0.10\nsearch calyx.svc\n"
    assert f"{web_ip}\tweb-0" in cx.output(server, "cat", "/etc/hosts")

    # pod to pod over the bridge
    assert cx.exec(client, "ping", "-c1", "-W5", web_ip).exit_code == 0
    assert _wait_http(cx, client, web_ip) == "pong\n"
    assert cx.exec(server, "ping", "-c1", "-W5", client_ip).exit_code == 0

    # the hostPort from the host's loopback and its own address
    for address in ("127.0.0.1", host_address()):
        with urllib.request.urlopen(f"http://{address}:{host_port}/", timeout=60) as answer:
            assert answer.read() == b"pong\n"

    # stopping the pod stops its containers; removing it removes them
    cx.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=web_id), timeout=120)
    assert cx.status(server).status.state == pb.CONTAINER_EXITED
    cx.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=web_id), timeout=120)
    left = cx.rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=web_id)))
    assert list(left.containers) == []
    assert pod_traces(cx.daemon, web_id) == []
    assert f"--dport {host_port}" not in iptables_save()
