"""The test images: Calyx's own (calyx-test/...) and the names upstream critest pulls, all built from
Debian's busybox-static and pushed to a local registry.

    python -m critest.images push --registry 127.0.0.1:5000 [--only calyx|critest] [--big]

Repositories keep their upstream path (k8s-staging-cri-tools/test-image-tag, e2e-test-images/busybox...)
so that a registry mirror serving gcr.io and registry.k8s.io from the local registry answers the names
critest compares its results with.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from critest.oci import Blob, Entry, Image, Layer, make_image, make_index, make_layer
from critest.push import Pusher

BUSYBOX = Path("/bin/busybox")
# Debian's dynamically linked busybox, unpacked (not installed: it conflicts with busybox-static) by
# deploy/install.sh --dev. Its applets do not run inside the shell, which critest's MaskedPaths spec needs.
DYNAMIC_BUSYBOX = Path("/var/cache/calyx-test/busybox-dynamic/bin/busybox")
NONEWPRIVS_SOURCE = Path(__file__).parent / "nonewprivs" / "main.go"
CRITEST_REGISTRY = "k8s-staging-cri-tools"  # repository path under gcr.io
E2E_IMAGES = "e2e-test-images"  # repository path under registry.k8s.io
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
calyx:x:1000:1000:calyx test user:/home/calyx:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
www-data:x:33:
calyx:x:1000:
predefined:x:50000:calyx
nogroup:x:65534:
"""


@dataclass
class Push:
    """One repository entry to push: a single image or an index of several, under some tags."""

    repo: str
    tags: list[str]
    image: Image | None = None
    index: Blob | None = None
    children: list[Image] | None = None


def busybox_path() -> Path:
    if not BUSYBOX.exists():
        raise SystemExit(f"{BUSYBOX} is missing: apt-get install busybox-static")
    return BUSYBOX


@functools.cache
def applets() -> list[str]:
    """Applet paths (bin/ls, usr/bin/env...) as this busybox lists them."""
    out = subprocess.run([str(busybox_path()), "--list-full"], capture_output=True, text=True, check=True)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


@functools.cache
def base_layer(compression: str = "gzip", docker: bool = False) -> Layer:
    """A root filesystem: busybox with every applet as a hard link, /etc files, the usual dirs."""
    dirs = ["bin", "dev", "etc", "home", "home/calyx", "proc", "root", "sbin", "sys", "tmp", "usr"]
    dirs += ["usr/bin", "usr/sbin", "var", "var/www", "www"]
    entries = [Entry(d, "dir", mode=0o1777 if d == "tmp" else 0o755) for d in dirs]
    entries[dirs.index("home/calyx")].uid = 1000
    entries[dirs.index("home/calyx")].gid = 1000
    entries.append(Entry("bin/busybox", data=busybox_path().read_bytes(), mode=0o755))
    # a hard link entry carries the mode of the file it names: unpackers that apply it must see 0755
    entries += [Entry(a, "link", target="bin/busybox", mode=0o755) for a in applets() if a != "bin/busybox"]
    entries += [
        Entry("etc/passwd", data=PASSWD.encode()),
        Entry("etc/group", data=GROUP.encode()),
        Entry("etc/hostname", data=b"calyx-test\n"),
        Entry("www/index.html", data=b"calyx test web server\n"),
    ]
    return make_layer(entries, compression, docker)


@functools.cache
def dynamic_base_layer() -> Layer:
    """Like base_layer, but /bin/busybox is the dynamic build with its glibc libraries beside it."""
    if not DYNAMIC_BUSYBOX.exists():
        return base_layer()
    out = subprocess.run(["ldd", str(DYNAMIC_BUSYBOX)], capture_output=True, text=True, check=True)
    libs = [Path(p) for line in out.stdout.splitlines() for p in line.split() if p.startswith("/")]
    dirs = ["bin", "dev", "etc", "home", "lib", "lib/x86_64-linux-gnu", "lib64", "proc", "root", "sys", "tmp"]
    dirs += ["sbin", "usr", "usr/bin", "usr/sbin", "var", "www"]
    entries = [Entry(d, "dir", mode=0o1777 if d == "tmp" else 0o755) for d in dirs]
    entries.append(Entry("bin/busybox", data=DYNAMIC_BUSYBOX.read_bytes(), mode=0o755))
    # a hard link entry carries the mode of the file it names: unpackers that apply it must see 0755
    entries += [Entry(a, "link", target="bin/busybox", mode=0o755) for a in applets() if a != "bin/busybox"]
    entries += [Entry(str(lib).lstrip("/"), data=lib.resolve().read_bytes(), mode=0o755) for lib in libs]
    entries += [Entry("etc/passwd", data=PASSWD.encode()), Entry("etc/group", data=GROUP.encode())]
    entries += [Entry(f"usr/bin/{name}", data=script.encode(), mode=0o755) for name, script in TOOLS.items()]
    return make_layer(entries)


# Commands critest runs in its busybox image that Debian's busybox lacks, as small scripts.
TOOLS = {
    # "pgrep NAME": the PIDs whose command name is NAME, one a line (critest: "pgrep sleep || true").
    "pgrep": '#!/bin/sh\npids=$(pidof "$1") || exit 1\nfor pid in $pids; do echo "$pid"; done\n',
    # "ipcs -m": the SysV shared-memory segments of this IPC namespace (critest: HostIpc specs).
    "ipcs": (
        "#!/bin/sh\n"
        'echo "------ Shared Memory Segments --------"\n'
        'echo "key shmid owner perms bytes nattch"\n'
        "tail -n +2 /proc/sysvipc/shm | while read -r key shmid perms size cpid lpid nattch uid rest; do\n"
        '  echo "$key $shmid $uid $perms $size $nattch"\n'
        "done\n"
    ),
}


def busybox_image(
    config: dict[str, object] | None = None,
    extra: list[Layer] | None = None,
    labels: dict[str, str] | None = None,
    compression: str = "gzip",
    docker: bool = False,
) -> Image:
    cfg: dict[str, object] = {"Env": [PATH_ENV], "Cmd": ["sh"], **(config or {})}
    return make_image([base_layer(compression, docker), *(extra or [])], cfg, docker=docker, labels=labels)


def nginx_like() -> Image:
    """What critest asks of its nginx image, from busybox: a web server on port 80 that writes
    /var/run/nginx.pid, is named ``nginx`` (pidof) and shows "master process" in /proc/1/cmdline."""
    script = (
        "echo $$ > /var/run/nginx.pid && "
        "exec -a httpd /usr/sbin/nginx -f -p 80 -h /www 'nginx: master process (busybox httpd)'"
    )
    layer = make_layer(  # a copy, not a link: a hard link cannot reach into a lower layer
        [
            Entry("usr", "dir", mode=0o755),
            Entry("usr/sbin", "dir", mode=0o755),
            Entry("usr/sbin/nginx", data=busybox_path().read_bytes(), mode=0o755),
            Entry("var", "dir", mode=0o755),
            Entry("var/run", "dir", mode=0o755),
        ]
    )
    config: dict[str, object] = {"Entrypoint": ["/bin/sh", "-c", script], "Cmd": []}
    config["ExposedPorts"] = {"80/tcp": {}}
    return busybox_image(config, extra=[layer])


def httpd_like() -> Image:
    """critest's httpd image: a web server on port 80 whose log names it."""
    script = 'echo "httpd: busybox httpd serving /www on port 80" && exec httpd -f -p 80 -h /www'
    return busybox_image({"Entrypoint": ["/bin/sh", "-c", script], "Cmd": [], "ExposedPorts": {"80/tcp": {}}})


@functools.cache
def nonewprivs_binary() -> bytes:
    """critest/nonewprivs/main.go, built static with Debian's Go toolchain (a test dependency)."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("critest's nonewprivs image needs the Go toolchain: run deploy/install.sh --dev")
    with tempfile.TemporaryDirectory(prefix="cx-nnp-") as work:
        env = dict(os.environ, GO111MODULE="off", GOCACHE=f"{work}/cache", CGO_ENABLED="0", GOFLAGS="")
        out = Path(work, "nnp")
        subprocess.run(
            [go, "build", "-ldflags=-s -w", "-o", str(out), str(NONEWPRIVS_SOURCE)],
            check=True, env=env, timeout=300, capture_output=True,
        )  # fmt: skip
        return out.read_bytes()


def nonewprivs_image() -> Image:
    """critest's nonewprivs image: a setuid-root program printing its effective uid, run as uid 1000."""
    layer = make_layer(
        [
            Entry("usr/local", "dir", mode=0o755),
            Entry("usr/local/bin", "dir", mode=0o755),
            Entry("usr/local/bin/nnp", data=nonewprivs_binary(), mode=0o4755),
        ]
    )
    return busybox_image({"Entrypoint": ["/usr/local/bin/nnp"], "Cmd": [], "User": "1000"}, extra=[layer])


def marker(path: str, text: str, compression: str = "gzip") -> Layer:
    return make_layer([Entry(path, data=text.encode())], compression)


def multilayer_layers() -> list[Layer]:
    """Three layers over busybox: files, then a whiteout of one and an opaque directory."""
    second = make_layer(
        [
            Entry("data", "dir", mode=0o755),
            Entry("data/a", data=b"a\n"),
            Entry("data/b", data=b"b\n", mode=0o600, uid=1000, gid=1000),
            Entry("data/dir", "dir", mode=0o755),
            Entry("data/dir/old", data=b"old\n"),
            Entry("data/link", "symlink", target="b"),
            Entry("data/hard", "link", target="data/b"),
            Entry("data/attr", data=b"x", xattrs={"user.calyx": "yes"}),
            Entry("data/null", "char", mode=0o666, major=1, minor=3),
            Entry("data/fifo", "fifo", mode=0o644),
        ]
    )
    third = make_layer(
        [
            Entry("data", "dir", mode=0o755),
            Entry("data/.wh.a", data=b""),
            Entry("data/dir", "dir", mode=0o755),
            Entry("data/dir/.wh..wh..opq", data=b""),
            Entry("data/dir/new", data=b"new\n"),
        ]
    )
    return [second, third]


def volume_layers() -> list[Layer]:
    """Data for image volume tests (no busybox): the second layer whites out a file of the first; the
    symlinks stay inside the image or lead out of it (absolute, or climbing above its root)."""
    first = make_layer(
        [
            Entry("content", "dir", mode=0o755),
            Entry("content/hello", data=b"hello from an image volume\n"),
            Entry("content/gone", data=b"whited out\n"),
            Entry("content/dir", "dir", mode=0o755),
            Entry("content/dir/file", data=b"file in dir\n"),
            Entry("content/inside", "symlink", target="dir"),
            Entry("content/out-abs", "symlink", target="/etc"),
            Entry("content/out-rel", "symlink", target="../../.."),
        ]
    )
    second = make_layer(
        [
            Entry("content", "dir", mode=0o755),
            Entry("content/.wh.gone", data=b""),
            Entry("content/second", data=b"from the second layer\n"),
        ]
    )
    return [first, second]


def calyx_images() -> list[Push]:
    """The images Calyx's own tests use."""
    web: dict[str, object] = {"Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"]}
    web["ExposedPorts"] = {"80/tcp": {}}
    amd64 = busybox_image(extra=[marker("arch", "amd64\n")])
    arm64 = make_image([base_layer(), marker("arch", "arm64\n")], {"Env": [PATH_ENV]}, arch="arm64")
    multi = make_index({"amd64": amd64, "arm64": arm64})
    return [
        Push("calyx-test/busybox", ["latest", "1.35"], busybox_image()),
        Push("calyx-test/web", ["latest"], busybox_image(web)),
        Push("calyx-test/user-uid", ["latest"], busybox_image({"User": "1002"})),
        Push("calyx-test/user-name", ["latest"], busybox_image({"User": "www-data"})),
        Push("calyx-test/user-uid-gid", ["latest"], busybox_image({"User": "1003:1003"})),
        Push("calyx-test/multilayer", ["latest"], busybox_image(extra=multilayer_layers())),
        Push(
            "calyx-test/zstd",
            ["latest"],
            busybox_image(extra=[marker("z", "z\n", "zstd")], compression="zstd"),
        ),
        Push(
            "calyx-test/plain",
            ["latest"],
            busybox_image(extra=[marker("p", "p\n", "none")], compression="none"),
        ),
        Push("calyx-test/docker", ["latest"], busybox_image(docker=True)),
        Push("calyx-test/multiarch", ["latest"], index=multi, children=[amd64, arm64]),
        Push("calyx-test/volume", ["latest"], make_image(volume_layers(), {"Env": [PATH_ENV]})),
    ]


def big_image(megabytes: int = 50) -> Push:
    """An image with one ``megabytes`` MB layer of incompressible data, for pull benchmarks."""
    data = os.urandom(megabytes * 1024 * 1024)
    layer = make_layer([Entry("big", data=data)])
    return Push("calyx-test/big", ["latest"], busybox_image(extra=[layer]))


def critest_images() -> list[Push]:
    """The names upstream critest pulls (gcr.io/k8s-staging-cri-tools/..., registry.k8s.io/...)."""
    r = CRITEST_REGISTRY
    same = busybox_image()
    pushes = [
        Push(f"{r}/test-image-latest", ["latest"], same),
        Push(f"{r}/test-image-tag", ["test", "all"], same),
        Push(f"{r}/test-image-digest", ["latest"], same),
        Push(f"{r}/test-image-tags", ["1", "2", "3"], same),
        Push(f"{r}/test-image-user-uid", ["latest"], busybox_image({"User": "1002"})),
        Push(f"{r}/test-image-user-username", ["latest"], busybox_image({"User": "www-data"})),
        Push(f"{r}/test-image-user-uid-group", ["latest"], busybox_image({"User": "1003:1003"})),
        Push(f"{r}/test-image-user-username-group", ["latest"], busybox_image({"User": "www-data:www-data"})),
        Push(f"{r}/test-image-predefined-group", ["latest"], busybox_image({"User": "1000"})),
        Push(
            f"{r}/hostnet-nginx-amd64",
            ["latest"],
            busybox_image({"Cmd": ["httpd", "-f", "-p", "12003", "-h", "/www"]}),
        ),
        Push(f"{E2E_IMAGES}/nginx", ["1.14-2"], nginx_like()),
        Push(f"{E2E_IMAGES}/httpd", ["2.4.39-4"], httpd_like()),
        Push(f"{E2E_IMAGES}/nonewprivs", ["1.3"], nonewprivs_image()),
        Push(
            f"{E2E_IMAGES}/busybox",
            ["1.29-2", "1.29-4", "1.36.1-1"],
            make_image([dynamic_base_layer()], {"Env": [PATH_ENV], "Cmd": ["sh"]}),
        ),
        Push("pause", ["3.10", "3.9"], busybox_image({"Entrypoint": ["sleep", "2147483647"], "Cmd": []})),
        Push("library/busybox", ["latest", "1.36"], busybox_image()),  # docker.io/library/busybox
    ]
    for n in (1, 2, 3):
        pushes.append(
            Push(f"{r}/test-image-{n}", ["latest"], busybox_image(labels={"calyx.test/image": str(n)}))
        )
    return pushes


def push_all(registry: str, pushes: list[Push], auth: tuple[str, str] | None = None) -> dict[str, str]:
    """Push every entry; returns "repo:tag" -> manifest (or index) digest."""
    digests: dict[str, str] = {}
    with Pusher(registry, auth) as pusher:
        for p in pushes:
            if p.index is not None:
                digest = pusher.index(p.repo, p.index, p.children or [], p.tags)
            else:
                assert p.image is not None
                digest = pusher.image(p.repo, p.image, p.tags)
            for tag in p.tags:
                digests[f"{p.repo}:{tag}"] = digest
    return digests


def mirror_config(registry: str) -> str:
    """A Calyx config drop-in that makes ``registry`` the mirror of every registry critest names
    (k8s.gcr.io too: critest pulls pause from it and from registry.k8s.io and compares the ids)."""
    lines = [f'[images.registries."{registry}"]', "insecure = true", ""]
    for upstream in ("gcr.io", "registry.k8s.io", "k8s.gcr.io", "docker.io"):
        lines += [f'[images.registries."{upstream}"]', f'mirrors = ["http://{registry}"]', ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m critest.images")
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="build the test images and push them to a registry")
    push.add_argument("--registry", required=True, help="host:port of a plain-HTTP registry")
    push.add_argument("--only", choices=["calyx", "critest"], help="push only one set")
    push.add_argument("--big", action="store_true", help="also push calyx-test/big (a 50 MB layer)")
    mirrors = sub.add_parser("mirror-config", help="print a calyx.d drop-in serving upstream names from it")
    mirrors.add_argument("--registry", required=True, help="host:port of the plain-HTTP registry")
    args = parser.parse_args(argv)
    if args.command == "mirror-config":
        print(mirror_config(args.registry), end="")
        return 0
    pushes: list[Push] = []
    if args.only in (None, "calyx"):
        pushes += calyx_images()
    if args.only in (None, "critest"):
        pushes += critest_images()
    if args.big:
        pushes.append(big_image())
    for name, digest in push_all(args.registry, pushes).items():
        print(f"{args.registry}/{name} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
