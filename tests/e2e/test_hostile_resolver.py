"""A pull whose registry name goes to a nameserver that never answers: the pull still ends at its deadline.

getaddrinfo asks the nameservers of /etc/resolv.conf and waits timeout x attempts for each (here 30 s x
5: two and a half minutes), longer than any pull may take. Each case runs in a child process in its own
network and mount namespaces: ``lo`` up, a UDP socket on 127.0.0.1:53 that reads queries and never
replies, and a resolv.conf naming it bind-mounted over /etc/resolv.conf there only (with an
nsswitch.conf asking files then DNS, and an /etc/hosts of the test's own). The host's DNS is never
touched; the namespaces, the mounts and the socket go with the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cri.images import resolver

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 90.0  # far above the pulls' deadlines below, far below the resolver's 150 s

HOSTS = "127.0.0.1 localhost\n127.0.0.2 multi.invalid-calyx.test\n127.0.0.1 multi.invalid-calyx.test\n"

_CHILD = r"""
import json, socket, subprocess, sys, threading, time
conf, case = sys.argv[1], sys.argv[2]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for name in ("resolv.conf", "nsswitch.conf", "hosts"):
    subprocess.run(["mount", "--bind", f"{conf}/{name}", f"/etc/{name}"], check=True)
nameserver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
nameserver.bind(("127.0.0.1", 53))  # reads nothing, answers nothing: the queries wait in its buffer

from calyx_base.errors import CalyxError
from cri.images import resolver
from cri.images.auth import Credentials
from cri.images.registry import Endpoint, RegistryClient

def pull(name, deadline):
    endpoint = Endpoint("https", f"{name}.invalid-calyx.test:5000")
    client = RegistryClient(endpoint, "x", Credentials(), deadline)
    try:
        client.manifest("y")
        return {"error": None}
    except CalyxError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    finally:
        client.close()

addresses = []
if case == "one":
    results = [pull("registry", time.monotonic() + 3)]
elif case == "refused":
    nameserver.close()  # the queries get ICMP port unreachable: the resolver fails at once
    results = [pull("registry", time.monotonic() + 60)]
elif case == "hosts":
    from cri.images.transport import Http
    from tests.hostile_registry import HostileServer, Reply
    addresses = resolver.shared().resolve("multi.invalid-calyx.test", 5000, 30)
    server = HostileServer(addresses[-1])  # nothing listens on the others: they refuse
    server.routes["/v2/"] = Reply(body=b"{}")
    port = server.host.rsplit(":", 1)[1]
    http = Http(time.monotonic() + 60)
    response = http.send("GET", f"http://multi.invalid-calyx.test:{port}/v2/", "ping")
    results = [{"error": None, "status": response.status_code, "served": len(server.requests("/v2/"))}]
    response.close()
    http.close()
    server.close()
elif case == "saturated":
    from cri.images.transport import Http
    from tests.hostile_registry import HostileServer, Reply
    stuck = []
    def ask(name):
        try:
            resolver.shared().resolve(name, 5000, 2)
        except OSError as exc:  # TimeoutError: its pool thread stays in getaddrinfo for minutes
            stuck.append(type(exc).__name__)
    names = [f"r{i}.invalid-calyx.test" for i in range(resolver.WORKERS)]  # one per pool thread
    askers = [threading.Thread(target=ask, args=(name,)) for name in names]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    server = HostileServer("127.0.0.1")  # a registry mirror /etc/hosts names
    server.routes["/v2/"] = Reply(body=b"{}")
    port = server.host.rsplit(":", 1)[1]
    http = Http(time.monotonic() + 20)
    try:
        response = http.send("GET", f"http://multi.invalid-calyx.test:{port}/v2/", "ping")
        results = [{"error": None, "status": response.status_code}]
        response.close()
    except Exception as exc:
        results = [{"error": type(exc).__name__, "message": str(exc)}]
    http.close()
    server.close()
    results.append(pull("other", time.monotonic() + 2))  # a name only DNS could answer still waits
    results.append({"stuck": stuck})
else:
    results = []
    def one(i):
        results.append(pull(f"r{i}", time.monotonic() + 2))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(int(case))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
pool = [t.name for t in threading.enumerate() if t.name.startswith(resolver.THREAD_NAME)]
queries = []
if nameserver.fileno() >= 0:
    nameserver.setblocking(False)
while nameserver.fileno() >= 0:
    try:
        queries.append(nameserver.recv(4096))
    except BlockingIOError:
        break
print(json.dumps({
    "results": results,
    "pool": pool,
    "queries": len(queries),
    "addresses": addresses,
    "asked_for_registry": any(b"invalid-calyx" in q for q in queries),
}))
"""


def run_with_dead_nameserver(case: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="calyx-deadns-") as conf:
        Path(conf, "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:5\n")
        Path(conf, "nsswitch.conf").write_text("hosts: files dns\n")
        Path(conf, "hosts").write_text(HOSTS)
        done = subprocess.run(
            ["unshare", "--net", "--mount", "--propagation", "private", "--",
             sys.executable, "-c", _CHILD, conf, case],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,  # kills the child (unshare execs it) if the pull hangs
        )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_a_nameserver_that_never_answers_ends_the_pull_at_its_deadline() -> None:
    out = run_with_dead_nameserver("one")
    assert out["asked_for_registry"], out  # the lookup really went to the dead nameserver
    [result] = out["results"]
    assert result["error"] == "DeadlineExceeded", result
    assert "deadline has passed" in result["message"], result


def test_lookups_hanging_on_a_dead_nameserver_hold_a_bounded_number_of_threads() -> None:
    pulls = 6 * resolver.WORKERS
    out = run_with_dead_nameserver(str(pulls))
    assert out["asked_for_registry"], out
    assert [r["error"] for r in out["results"]] == ["DeadlineExceeded"] * pulls, out["results"]
    # Every worker is stuck in getaddrinfo for minutes, and no more were started for the other pulls.
    assert len(out["pool"]) == resolver.WORKERS, out["pool"]


def test_a_resolver_failure_names_the_host() -> None:
    out = run_with_dead_nameserver("refused")
    [result] = out["results"]
    assert result["error"] == "Unavailable", result
    assert "cannot resolve registry.invalid-calyx.test" in result["message"], result


def test_a_name_with_several_addresses_is_reached_at_the_first_that_answers() -> None:
    out = run_with_dead_nameserver("hosts")
    # The registry listens on the last of the name's two addresses only: the first refuses.
    assert sorted(out["addresses"]) == ["127.0.0.1", "127.0.0.2"], out
    assert out["results"] == [{"error": None, "status": 200, "served": 1}], out
    assert out["queries"] == 0, out  # /etc/hosts answered: no DNS query


def test_a_name_in_the_hosts_file_resolves_while_a_dead_nameserver_holds_every_lookup_thread() -> None:
    out = run_with_dead_nameserver("saturated")
    mirror, other, stuck = out["results"]
    # Every pool thread is stuck on the dead nameserver, whose lookups ran out of time.
    assert stuck == {"stuck": ["TimeoutError"] * resolver.WORKERS}, out
    assert len(out["pool"]) == resolver.WORKERS and out["asked_for_registry"], out
    # The mirror /etc/hosts names is reached all the same; a name only DNS knows still ends at its deadline.
    assert mirror == {"error": None, "status": 200}, out
    assert other["error"] == "DeadlineExceeded", out
