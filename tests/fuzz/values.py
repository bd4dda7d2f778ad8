"""Leaf values of generated CRI requests: hostile strings and numbers, references to live objects, and
the only programs a fuzzed container or exec may run.

A ``Ref`` stands for a value known only when the request is sent (the id of a pod the run made, a path
in this run's scratch tree, one of the ports the test holds): strategies draw the Ref, ``World.resolve``
turns it into the string or number, so a replayed or shrunk example names the objects of its own run.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

# --- programs ---------------------------------------------------------------------------------------

# Long-running, and ends on SIGTERM (a busybox sh as PID 1 ignores it unless trapped).
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
SCRIPTS = [
    LOOP[2],
    "exit 0",
    "exit 3",
    "echo out; echo err >&2",
    "sleep 0.3",
    "touch /tmp/cxfz; ls /tmp > /dev/null",
    "yes cxfz | head -c 20000",
]
# Programs that ignore or merely print any arguments appended to them.
EXTENSIBLE = {"true", "echo"}
# Whole command lines taken as they are.
FIXED = [["sleep", "1"], ["cat", "/etc/hostname"], ["id"], ["pwd"], ["env"]]
# A program name no image has: exec fails, whatever follows it.
NOSUCH = ("cxfz-nosuch-", "/cxfz-nosuch/")


def harmless(argv: list[str]) -> bool:
    """Whether a container or exec may run ``argv`` (the empty command falls back to the image's, which
    the fuzz only uses with images whose default is ``sh``)."""
    if not argv:
        return True
    if argv[0].startswith(NOSUCH) or argv[0] in EXTENSIBLE:
        return True
    if len(argv) >= 3 and argv[:2] == ["sh", "-c"] and argv[2] in SCRIPTS:
        return True
    return argv in FIXED


# --- references -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A value resolved at call time by ``World.resolve`` (see tests/fuzz/world.py).

    kinds: pod, ctr (ids; ``form`` full, prefix, upper, padded, extended, truncated), image (names and
    ids of the test images), scratch (``parts`` under the run's scratch tree), logdir, cgroup (``parts``
    under the run's cgroup prefix), cidr (a subnet of the run's claimed networks), port (a host port the
    test holds), seccomp (a profile file of the scratch tree).
    """

    kind: str
    index: int = 0
    form: str = "full"
    parts: tuple[str, ...] = ()


ID_FORMS = ["full", "full", "full", "prefix", "upper", "padded", "extended", "truncated"]


def id_ref(kind: str) -> st.SearchStrategy[Ref]:
    return st.builds(Ref, st.just(kind), st.integers(0, 50), st.sampled_from(ID_FORMS))


# --- strings ----------------------------------------------------------------------------------------

SPECIALS = [
    "",
    " ",
    ".",
    "..",
    "/",
    "//",
    "../..",
    "../../../../etc",
    "/proc/self/root",
    "\x00",
    "a\x00b",
    "\n",
    "\t",
    "-",
    "--",
    "-rf",
    "${HOME}",
    "$(id)",
    "`id`",
    "%s%n",
    ":",
    "@",
    "=",
    "a=b",
    "*",
    "?",
    "'",
    '"',
    "\\",
    "sha256:",
    "sha256:" + "0" * 64,
    "0" * 64,
    "localhost",
    "\u202e",
    "\ufeff",
    "é",
    "\U0001f600",
    "ǅ",
]
COMPONENTS = [
    "a",
    "b",
    "dir",
    ".",
    "..",
    "x" * 255,
    "y" * 256,
    "é",
    "sp ace",
    "\x00",
    "cxfzmark",
    "link",
    "file",
]


def components() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(COMPONENTS), st.text(min_size=1, max_size=8))


def path_like() -> st.SearchStrategy[str]:
    """Absolute or relative, with dots, doubled slashes, NULs and over-long components."""
    return st.builds(
        lambda lead, parts, trail: lead + "/".join(parts) + trail,
        st.sampled_from(["/", "", "//", "./", "../"]),
        st.lists(components(), max_size=5),
        st.sampled_from(["", "/", "/."]),
    )


def huge() -> st.SearchStrategy[str]:
    return st.builds(
        lambda n, c: c * n,
        st.sampled_from([256, 4097, 65537, 1 << 20]),
        st.sampled_from(["a", "/", "é", "\x00"]),
    )


def text() -> st.SearchStrategy[str]:
    """Any string a hostile client may send."""
    return st.one_of(
        st.sampled_from(SPECIALS),
        st.text(max_size=12),
        st.text(st.characters(codec="ascii"), max_size=24),
        path_like(),
        huge(),
    )


def token() -> st.SearchStrategy[str]:
    """A plausible name (kubelet's alphabet), sometimes empty or long."""
    return st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,14}", fullmatch=True),
        st.sampled_from(["", "a" * 64, "a" * 254, "A_b.c"]),
    )


# --- numbers ----------------------------------------------------------------------------------------

INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def integer(kind: str) -> st.SearchStrategy[int]:
    """Edges of the type, the usual small values, and anything in range."""
    low, high = INT_RANGES[kind]
    edges = sorted(
        {v for v in (low, high, 0, 1, -1, 2, 255, 1024, 65535, 65536, 2**31 - 1, 2**32) if low <= v <= high}
    )
    return st.one_of(
        st.sampled_from(edges),
        st.integers(low, high),
        st.integers(-2, 70000).filter(lambda v: low <= v <= high),
    )
