"""The run's outputs: a table on stdout, JSON with every sample, and a short Markdown table.

Ratios follow the issue's targets: Calyx over containerd for latencies and memory (lower is better),
containerd over Calyx turned around for throughput (higher is better), and Calyx against runc's floor.
Calyx is measured on each pod network asked for (``calyx``: a CNI conflist; ``calyx-builtin``: the
built-in network, no CNI config), each against the same containerd (CNI bridge), and every target is
checked for each network.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.sizes import Size
from bench.stats import Result, short

CALYX, CALYX_BUILTIN, REFERENCE, FLOOR = "calyx", "calyx-builtin", "containerd", "floor"
CALYX_TARGETS = (CALYX, CALYX_BUILTIN)
NETWORK = {CALYX: "CNI", CALYX_BUILTIN: "built-in"}


@dataclass(frozen=True)
class Goal:
    label: str
    ours: str  # result name on Calyx
    theirs: str  # result name on the reference (or the floor)
    against: str  # REFERENCE or FLOOR
    op: str  # "<=" (ratio at most), ">=" (ratio at least), "+ms" (median at most theirs + limit)
    limit: float


def goals(size: Size) -> list[Goal]:
    high, alive = size.list_counts[1], size.alive_pods
    run_alive, teardown_alive = f"run_pod_sandbox_{alive}_alive", f"pod_teardown_{alive}_alive"
    empty = "pod_teardown_empty"
    return [
        Goal("RunPodSandbox, one pod at a time", "run_pod_sandbox", "run_pod_sandbox", REFERENCE, "<=", 0.5),
        Goal(f"RunPodSandbox, {alive} pods alive", run_alive, run_alive, REFERENCE, "<=", 0.5),
        Goal(
            "container create+start", "container_create_start", "container_create_start", REFERENCE, "<=", 1.0
        ),
        Goal("pod teardown, pod with a container", "pod_teardown", "pod_teardown", REFERENCE, "<=", 1.0),
        Goal("pod teardown, one empty pod at a time", empty, empty, REFERENCE, "<=", 1.0),
        Goal(f"pod teardown, {alive} pods alive", teardown_alive, teardown_alive, REFERENCE, "<=", 1.0),
        Goal(
            f"ListContainers {high}",
            f"list_containers_{high}",
            f"list_containers_{high}",
            REFERENCE,
            "<=",
            1.0,
        ),
        Goal(
            f"ListPodSandbox {size.pods} pods / {high} containers",
            f"list_pod_sandbox_{high}",
            f"list_pod_sandbox_{high}",
            REFERENCE,
            "<=",
            1.0,
        ),
        Goal(
            f"ListContainerStats {high}",
            f"list_container_stats_{high}",
            f"list_container_stats_{high}",
            REFERENCE,
            "<=",
            1.0,
        ),
        Goal(
            "helper PSS per container vs containerd's per pod",
            "helper_pss_per_container",
            "helper_pss_per_pod",
            REFERENCE,
            "<=",
            0.5,
        ),
        Goal("pull throughput", "pull_mbps", "pull_mbps", REFERENCE, ">=", 1.0),
        Goal("container create+start vs runc run", "container_create_start", "runc_run", FLOOR, "+ms", 30.0),
    ]


def evaluate(results: dict[str, dict[str, Result]], size: Size) -> list[dict[str, Any]]:
    """Every goal for each Calyx (each network) in ``results``."""
    return [row for name in CALYX_TARGETS if name in results for row in _evaluate(results, size, name)]


def _evaluate(results: dict[str, dict[str, Result]], size: Size, name: str) -> list[dict[str, Any]]:
    rows = []
    for g in goals(size):
        ours = results[name].get(g.ours)
        theirs = results.get(g.against, {}).get(g.theirs)
        row: dict[str, Any] = {
            "goal": g.label,
            "runtime": name,
            "network": NETWORK[name],
            "ours": g.ours,
            "theirs": f"{g.against}:{g.theirs}",
        }
        a = ours.median if ours else None
        b = theirs.median if theirs else None
        row.update(calyx=a, other=b, ratio=None, met=None)
        if g.op == "+ms":
            row["target"] = f"<= {g.against} + {g.limit:g} ms"
            if a is not None and b is not None:
                row["ratio"] = a - b  # here: the difference in ms
                row["met"] = a <= b + g.limit
        else:
            row["target"] = f"{g.op} {g.limit:g}x"
            if a is not None and b:
                row["ratio"] = a / b
                row["met"] = row["ratio"] <= g.limit if g.op == "<=" else row["ratio"] >= g.limit
        rows.append(row)
    return rows


def _read_meminfo_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "memory_mb": _read_meminfo_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def table(results: dict[str, dict[str, Result]], markdown: bool) -> str:
    """Medians of every runtime side by side, then each Calyx's ratio to the reference."""
    runtimes = [r for r in (*CALYX_TARGETS, REFERENCE) if r in results]
    ratios = [r for r in CALYX_TARGETS if r in results] if REFERENCE in results else []
    names: list[str] = []
    for r in runtimes:
        names += [n for n in results[r] if n not in names]
    header = ["benchmark", *[f"{r} median (min..p95)" for r in runtimes]]
    header += [f"{r} / {REFERENCE}" for r in ratios]
    rows = []
    for n in names:
        cells = [n]
        for r in runtimes:
            cells.append(short(results[r].get(n)))
        for r in ratios:
            a, b = results[r].get(n), results[REFERENCE].get(n)
            ma, mb = (a.median if a else None), (b.median if b else None)
            cells.append(f"{ma / mb:.2f}x" if ma is not None and mb else "-")
        rows.append(cells)
    if FLOOR in results:
        for n, res in results[FLOOR].items():
            rows.append([f"floor: {n}", short(res)] + ["-"] * (len(header) - 2))
    return render(header, rows, markdown)


def goals_table(rows: list[dict[str, Any]], markdown: bool) -> str:
    out = []
    for row in rows:
        if row["ratio"] is None:
            value = "-"
        elif row["target"].endswith("ms"):
            value = f"{row['ratio']:+.1f} ms"
        else:
            value = f"{row['ratio']:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        out.append([row["goal"], row["network"], value, row["target"], met])
    return render(["target", "network", "measured", "goal", "met"], out, markdown)


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def write(
    out_dir: Path,
    results: dict[str, dict[str, Result]],
    size: Size,
    meta: dict[str, Any],
) -> tuple[Path, Path, str]:
    """Write ``bench-<stamp>.json`` and ``.md`` (and ``latest.*``); returns the paths and the text table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = evaluate(results, size)
    doc = {
        "meta": meta,
        "results": {r: {n: res.to_json() for n, res in rs.items()} for r, rs in results.items()},
        "targets": rows,
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    json_path = out_dir / f"bench-{stamp}.json"
    md_path = out_dir / f"bench-{stamp}.md"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    m = meta["machine"]
    loads = "; ".join(f"{r} {a:g} -> {b:g}" for r, (a, b) in meta.get("load_1m", {}).items())
    networks = "; ".join(f"{r}: {n}" for r, n in meta.get("networks", {}).items() if r in results)
    md = [
        f"Benchmark run {meta['date']} (size {meta['size']}), {m['nproc']} CPUs, "
        f"{m['memory_mb']} MB RAM, kernel {m['kernel']}; {versions}.",
        "",
        f"Load average (1 min) before -> after each runtime: {loads or 'not recorded'}.",
        "",
        f"Pod networks: {networks or 'not recorded'}.",
        "",
        table(results, markdown=True),
        "",
        goals_table(rows, markdown=True),
        "",
    ]
    md_path.write_text("\n".join(md))
    (out_dir / "latest.json").write_text(json_path.read_text())
    (out_dir / "latest.md").write_text(md_path.read_text())
    text = table(results, markdown=False) + "\n\n" + goals_table(rows, markdown=False)
    return json_path, md_path, text
