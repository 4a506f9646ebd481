"""The report's content as tables of text, rendered to HTML (``page``) and Markdown (``markdown``) alike."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mali_hil.harness.records.results import LoadResult, Status
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


#: the suite's properties in the order every table shows them (others after them, in the order first seen)
PROPERTIES = ("numerics", "dtypes", "memory-bound", "oom", "fit", "idempotence", "shards", "corrupt-input",
              "large-offsets", "leaks")
PEAK_HEADERS = ("device peak / cap (ok jobs)", "RAM peak / budget (ok jobs)", "jobs ok / oom / other")


def property_verdict(outcomes: Iterable[str]) -> str:
    """The one pass rule for a loader's tests of one property: ``pass`` when some passed and none failed or
    errored (skips aside), ``xfail`` when the rest were expected failures, ``skip`` when all were skipped, else
    the counts (``1 failed/3 passed``)."""
    seen = Counter(outcomes)
    if not seen:
        return "-"
    if set(seen) <= {"passed", "skipped"}:
        return "pass" if seen["passed"] else "skip"
    if set(seen) <= {"passed", "skipped", "xfail"}:
        return "xfail"
    return "/".join(f"{n} {o}" for o, n in seen.items())


def highest(results: Iterable[LoadResult], used: str, limit: str) -> str:
    """The ok job closest to its limit, as "used / limit" (fields of LoadResult, in bytes): a killed job's peak
    is the limit it crossed, not a fit."""
    pairs = [(getattr(r, used), getattr(r, limit)) for r in results if r.status is Status.OK]
    pairs = [(u, lim) for u, lim in pairs if u is not None and lim]
    if not pairs:
        return "n/a"
    u, lim = max(pairs, key=lambda pair: pair[0] / pair[1])
    return f"{format_size(u)} / {format_size(lim)}"


def status_counts(results: Sequence[LoadResult]) -> str:
    ok = sum(r.status is Status.OK for r in results)
    oom = sum(r.status in (Status.DEVICE_OOM, Status.OOM_KILLED) for r in results)
    return f"{ok} / {oom} / {len(results) - ok - oom}"


def variant_table(
    records: Sequence[LoadResult],
    outcomes: Mapping[tuple[str, str], Sequence[str]],
    loaders: Sequence[str] = (),
    bounds: Mapping[str, str] | None = None,
    by_device: bool = False,
) -> Table | None:
    """The per-variant table of a run, for the terminal and the report alike: one row per loader (``by_device``:
    per device and loader), which bounds its memory was judged by, each property's verdict (``outcomes``:
    (loader, property) -> the outcomes of its tests), the highest device and RAM peaks of its ok jobs against their
    limits, and its jobs by status. ``loaders``: rows to show even without records."""
    if not records and not outcomes:
        return None
    named = [prop for _, prop in outcomes]
    props = [p for p in PROPERTIES if p in named] + [p for p in dict.fromkeys(named) if p not in PROPERTIES]
    order = list(dict.fromkeys([*loaders, *(r.loader for r in records), *(loader for loader, _ in outcomes)]))
    # by device: one row per device a loader ran on; a loader with no records at all (properties only) on "-"
    devices: list[str | None] = [*dict.fromkeys(r.device for r in records)] if by_device else [None]
    unrecorded = {loader for loader in order if not any(r.loader == loader for r in records)} if by_device else set()
    judged = bool(bounds)
    headers = ["device"] * by_device + ["loader"] + ["bounds"] * judged + [*props, *PEAK_HEADERS]
    rows = []
    for device in devices + ["-"] * bool(unrecorded):
        for loader in order:
            mine = [r for r in records if r.loader == loader and device in (None, r.device)]
            if by_device and not mine and not (device == "-" and loader in unrecorded):
                continue
            cells = [device] * by_device + [loader] + [(bounds or {}).get(loader, "-")] * judged
            cells += [property_verdict(outcomes.get((loader, p), ())) for p in props]
            cells += [highest(mine, "device_peak_bytes", "device_cap_bytes"),
                      highest(mine, "peak_unified_bytes", "ram_budget_bytes"), status_counts(mine)]  # fmt: skip
            rows.append([str(cell) for cell in cells])
    return Table("Loader variants (mali-hil run)", headers, rows)


def text_lines(table: Table) -> list[str]:
    """A table as aligned plain-text lines, for a terminal."""
    rows = [table.headers, *table.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.headers))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines + table.notes


def run_table(inputs: ReportInputs) -> Table | None:
    """The report's per-variant table: the run's records (per device, as results files may hold several) and the
    JUnit XML's property outcomes."""
    outcomes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for case in inputs.properties:
        outcomes[(case.loader, case.prop)].append(case.outcome)
    return variant_table([r for _, r in inputs.records], outcomes, by_device=True)


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


def board_diff_table(doc: dict[str, Any]) -> Table:
    """``mali-hil board diff``'s table: per test and loader, the board's and the twin's verdicts and peaks."""
    from mali_hil.harness.twin.diff import headline, table_rows

    headers, rows = table_rows(doc)
    return Table(f"{doc['board']} against its twin {doc['twin']}", headers, rows, [headline(doc)])
