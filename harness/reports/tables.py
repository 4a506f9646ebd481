"""The report's content as tables of text, rendered to HTML (``page``) and Markdown (``markdown``) alike."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from mali_hil.harness.reports.inputs import ReportInputs
from mali_hil.sizes import format_size

#: What issue 13 expected, checked against the measurement (never written in): under exo's 2024 rule no variant
#: fits every node of 3 GB boards; under the corrected rule a streaming variant does.
STREAMING = ("chunked", "mmap")


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def size(n: int | None) -> str:
    return "n/a" if n is None else format_size(n)


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def variant_table(inputs: ReportInputs) -> Table | None:
    if not inputs.records:
        return None
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for _, r in inputs.records:
        groups[(r.device, r.loader)].append(r)
    rows = []
    for (device, loader), results in groups.items():
        statuses = Counter(r.status.value for r in results)
        worst_dev = max(results, key=lambda r: r.device_peak_bytes or 0)
        worst_ram = max(results, key=lambda r: r.peak_unified_bytes or 0)
        rows.append(
            [
                device,
                loader,
                str(len(results)),
                ", ".join(f"{n} {s}" for s, n in statuses.items()),
                f"{size(worst_dev.device_peak_bytes)} of {size(worst_dev.device_cap_bytes)}",
                f"{size(worst_ram.peak_unified_bytes)} of {size(worst_ram.ram_budget_bytes)}",
            ]
        )
    return Table(
        "Peak memory per variant (mali-hil run)",
        ["device", "loader", "jobs", "statuses", "highest device peak", "highest RAM peak"],
        rows,
    )


def property_table(inputs: ReportInputs) -> Table | None:
    if not inputs.properties:
        return None
    outcomes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    props: list[str] = []
    for case in inputs.properties:
        outcomes[(case.loader, case.prop)][case.outcome] += 1
        if case.prop not in props:
            props.append(case.prop)
    loaders = list(dict.fromkeys(case.loader for case in inputs.properties))
    rows = []
    for loader in loaders:
        row = [loader]
        for prop in props:
            seen = outcomes.get((loader, prop))
            row.append(
                "-"
                if not seen
                else (
                    "pass"
                    if set(seen) <= {"passed", "skipped"} and seen["passed"]
                    else "/".join(f"{n} {o}" for o, n in seen.items())
                )
            )
        rows.append(row)
    return Table("Property results (JUnit XML of mali-hil run)", ["loader", *props], rows)


def ordered(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The node rows in plan order (keep rule, loader, node), whatever order a partial document has them in."""
    keeps, loaders = doc["keeps"], doc["loaders"]
    return sorted(doc["results"], key=lambda r: (keeps.index(r["keep"]), loaders.index(r["loader"]), r["index"]))


def node_cells(r: dict[str, Any]) -> list[str]:
    """One cluster node's row: node, layers, final bytes, device peak, unified peak, verdict, peak tensor."""
    tensor = r["peak_tensor"]
    layers = f"{r['layers'][0]}-{r['layers'][1]}"
    sizes = [size(r[key]) for key in ("final_bytes", "device_peak_bytes", "peak_unified_bytes")]
    return [r["node"], layers, *sizes, r["verdict"], f"{tensor['name']} ({tensor['basis']})"]


def cluster_tables(doc: dict[str, Any]) -> list[Table]:
    incomplete = "" if doc.get("complete", True) else f" (INCOMPLETE: {len(doc['results'])} of {doc['jobs']} jobs)"
    tables = [
        Table(
            f"Cluster: {doc['model']['name']} over {doc['nodes']} x {doc['device']['spec']}{incomplete}",
            ["keep rule", "loader", "nodes that fit", "verdicts"],
            [],
            notes=[conclusion(doc)],
        )
    ]
    for keep in doc["keeps"]:
        for loader in doc["loaders"]:
            rows = [r for r in doc["results"] if r["keep"] == keep and r["loader"] == loader]
            if not rows:
                tables[0].rows.append([keep, loader, "not run", ""])
                continue
            verdicts = Counter(r["verdict"] for r in rows)
            tables[0].rows.append(
                [keep, loader, f"{verdicts['fits']} of {len(rows)}", ", ".join(f"{n} {v}" for v, n in verdicts.items())]
            )
    per_node = Table(
        "Cluster, per node",
        [
            "keep rule",
            "loader",
            "node",
            "layers",
            "bytes (final)",
            "device peak",
            "unified peak",
            "verdict",
            "peak tensor",
        ],
        [],
    )
    for r in ordered(doc):
        per_node.rows.append([r["keep"], r["loader"], *node_cells(r)])
    per_node.notes.append(
        "peak tensor: 'measured' when a refused allocation is exactly that tensor's size; "
        "'inferred' is the node's largest tensor (loaders report no per-tensor timeline)"
    )
    tables.append(per_node)
    return tables


def conclusion(doc: dict[str, Any]) -> str:
    """What the measurement says about the expectation, in one sentence per keep rule."""

    def all_fit(keep: str, loader: str) -> bool:
        rows = [r for r in doc["results"] if r["keep"] == keep and r["loader"] == loader]
        return bool(rows) and all(r["verdict"] == "fits" for r in rows)

    parts = []
    if not doc.get("complete", True):
        return "The run did not finish: no conclusion is drawn from part of it."
    if doc["model"]["name"] != "llama-3-8b":  # the expectation is about Llama-3-8B on 3 GB boards only
        for keep in doc["keeps"]:
            fitting = [name for name in doc["loaders"] if all_fit(keep, name)]
            parts.append(f"{keep} rule: {', '.join(fitting) or 'no variant'} fits every node")
        return "; ".join(parts) + " (measured)."
    if "exo-2024" in doc["keeps"]:
        fitting = [name for name in doc["loaders"] if all_fit("exo-2024", name)]
        parts.append(
            "exo-2024 rule: no variant fits every node, as expected"
            if not fitting
            else f"exo-2024 rule: {', '.join(fitting)} fit every node, CONTRARY to the expectation"
        )
    if "first-last" in doc["keeps"]:
        fitting = [name for name in doc["loaders"] if all_fit("first-last", name)]
        streaming = [name for name in fitting if name in STREAMING]
        if streaming:
            parts.append(
                f"first-last rule: {', '.join(fitting)} fit every node (streaming: {', '.join(streaming)}), as expected"
            )
        else:
            tried = [name for name in doc["loaders"] if name in STREAMING]
            parts.append(
                f"first-last rule: {', '.join(fitting) or 'no variant'} fits every node"
                + (
                    ", CONTRARY to the expectation that a streaming variant does"
                    if tried
                    else " (no streaming variant was run)"
                )
            )
    return "; ".join(parts) + " (measured)."


def threshold_table(doc: dict[str, Any]) -> Table:
    step = doc["device"]["step"] >> 20
    table = Table(
        f"Threshold: smallest {doc['device']['profile']} board, to {step} MiB ({doc['checkpoint']}, "
        f"shard {doc['shard'] or 'all'}, keep {doc['keep']})",
        [
            "loader",
            "predicted RAM",
            "measured RAM",
            "measured / predicted",
            "final device bytes",
            "measured / final",
            "probes",
        ],
        [],
    )
    for t in doc["thresholds"]:
        measured = size(t["measured_ram"]) if t["measured_ram"] is not None else f"none ({t['stopped']})"
        table.rows.append(
            [
                t["loader"],
                size(t["predicted_ram"]),
                measured,
                ratio(t["measured_over_predicted"]),
                size(t["final_bytes"]),
                ratio(t["ratio_to_final"]),
                str(len(t["probes"])),
            ]
        )
    table.notes.append(
        f"predicted: mali-hil fit's rule on the declared bounds, with the idle worker's "
        f"{size(doc['idle_baseline_bytes'])}; '-' where a variant declares none"
    )
    return table


def environment_table(inputs: ReportInputs) -> Table:
    from mali_hil.harness.reports.environment import board_facts, environment

    here = environment()
    seen: dict[str, list[str]] = defaultdict(list)
    for doc in inputs.clusters + inputs.thresholds:
        for key, value in doc.get("environment", {}).items():
            for v in value if isinstance(value, list) else [value]:
                if v and str(v) not in seen[key]:
                    seen[key].append(str(v))
    for key, values in board_facts(r for _, r in inputs.records).items():
        for v in values:
            if v not in seen[key]:
                seen[key].append(v)
    rows = [[key, "; ".join(values)] for key, values in seen.items() if values]
    for key in ("tinygrad", "mali_hil", "python"):
        if key not in seen:
            rows.append([key, f"{here[key]} (of the machine that made this report)"])
    rows.append(["inputs", ", ".join(inputs.sources)])
    return Table("Environment", ["fact", "value"], rows)
