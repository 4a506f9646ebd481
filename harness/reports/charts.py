"""The report's charts, drawn with matplotlib and returned as inline SVG text (no files, no network, no script).

matplotlib is imported here only, when a report is made: nothing else in mali-hil needs it (extra ``report``).
Figures are made with ``matplotlib.figure.Figure`` directly, so no pyplot state or GUI backend is involved, and
text stays text (``svg.fonttype: none``), which keeps the SVG small and its labels searchable in the page.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from mali_hil.harness.reports.inputs import ReportInputs
from mali_hil.harness.reports.tables import ordered

GIB = float(1 << 30)
VERDICT_COLOURS = {"fits": "#2e7d32", "device-oom": "#ef6c00", "oom-killed": "#c62828"}
OTHER_COLOUR = "#6d6d6d"


def _svg(figure: Any, salt: str) -> str:
    import matplotlib

    buffer = io.StringIO()
    # a salt per chart keeps the ids matplotlib writes (clip paths) distinct between the SVGs of one page
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # the XML prolog and DOCTYPE have no place inside HTML


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def peaks_per_variant(inputs: ReportInputs) -> list[tuple[str, str]]:
    """(title, svg) per profile seen in the run records: each variant's highest device and RAM peaks against the
    device's memory and the board's RAM."""
    # grouped by device name: a killed job's record may lack the cap, which the others of its device state
    profiles: dict[str, dict[str, list[Any]]] = {}
    for _, r in inputs.records:
        profiles.setdefault(r.device, {}).setdefault(r.loader, []).append(r)
    charts = []
    for i, (device, by_loader) in enumerate(profiles.items()):
        every = [r for results in by_loader.values() for r in results]
        cap = max((r.device_cap_bytes for r in every if r.device_cap_bytes), default=None)
        budget = max((r.ram_budget_bytes for r in every if r.ram_budget_bytes), default=None)
        loaders = list(by_loader)
        device_peaks = [max((r.device_peak_bytes or 0) for r in by_loader[name]) / GIB for name in loaders]
        ram_peaks = [max((r.peak_unified_bytes or 0) for r in by_loader[name]) / GIB for name in loaders]
        figure = _figure(8, 3.6)
        ax = figure.add_subplot()
        xs = range(len(loaders))
        ax.bar([x - 0.2 for x in xs], device_peaks, width=0.4, label="device peak", color="#1565c0")
        ax.bar([x + 0.2 for x in xs], ram_peaks, width=0.4, label="unified RAM peak", color="#90caf9")
        if cap:
            ax.axhline(cap / GIB, color="#ef6c00", linestyle="--", label=f"device memory {cap / GIB:.2f} GiB")
        if budget:
            ax.axhline(budget / GIB, color="#c62828", linestyle=":", label=f"board RAM {budget / GIB:.2f} GiB")
        ax.set_xticks(list(xs), loaders, rotation=15)
        ax.set_ylabel("GiB")
        ax.set_title(f"highest peaks per variant on {device}")
        ax.legend(fontsize=8)
        charts.append((f"peaks on {device}", _svg(figure, f"peaks-{i}")))
    return charts


def cluster_nodes(doc: dict[str, Any], index: int = 0) -> list[tuple[str, str]]:
    """(title, svg) per keep rule: per node and variant, the unified RAM peak coloured by verdict, the device
    peak as a thin bar inside it, against the board's RAM and device memory."""
    cap, budget = doc["device"]["cap_bytes"], doc["device"]["ram_budget_bytes"]
    charts = []
    for keep in doc["keeps"]:
        loaders = doc["loaders"]
        figure = _figure(9, 1.0 + 1.6 * len(loaders))
        axes = figure.subplots(len(loaders), 1, sharex=True, squeeze=False)[:, 0]
        for ax, loader in zip(axes, loaders, strict=True):
            rows = [r for r in ordered(doc) if r["keep"] == keep and r["loader"] == loader]
            names = [f"{r['node'][-2:]}\n{r['layers'][0]}-{r['layers'][1]}" for r in rows]
            ram = [(r["peak_unified_bytes"] or 0) / GIB for r in rows]
            dev = [(r["device_peak_bytes"] or 0) / GIB for r in rows]
            colours = [VERDICT_COLOURS.get(r["verdict"], OTHER_COLOUR) for r in rows]
            ax.bar(names, ram, color=colours, width=0.7)
            ax.bar(names, dev, color="#263238", width=0.25)
            if budget:
                ax.axhline(budget / GIB, color="#c62828", linestyle=":")
            if cap:
                ax.axhline(cap / GIB, color="#ef6c00", linestyle="--")
            fits = sum(r["verdict"] == "fits" for r in rows)
            ax.set_ylim(0, max([*ram, (budget or 0) / GIB]) * 1.08 or 1)
            ax.set_title(f"{loader}: {fits} of {len(rows)} nodes fit", fontsize=9, loc="left")
            ax.set_ylabel("GiB", fontsize=8)
            ax.tick_params(labelsize=7)
        _verdict_legend(figure, cap, budget)
        figure.suptitle(f"{doc['model']['name']} over {doc['nodes']} nodes, keep rule {keep}", fontsize=10)
        charts.append((f"cluster, keep {keep}", _svg(figure, f"cluster-{index}-{keep}")))
    return charts


def _verdict_legend(figure: Any, cap: int | None, budget: int | None) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=c, label=f"RAM peak, {v}") for v, c in VERDICT_COLOURS.items()]
    handles.append(Patch(color="#263238", label="device peak"))
    if budget:
        handles.append(Line2D([], [], color="#c62828", linestyle=":", label="board RAM"))
    if cap:
        handles.append(Line2D([], [], color="#ef6c00", linestyle="--", label="device memory"))
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7)


def thresholds(doc: dict[str, Any], index: int = 0) -> tuple[str, str]:
    """Predicted against measured smallest board RAM per variant, with the final device bytes for scale."""
    rows: Sequence[dict[str, Any]] = doc["thresholds"]
    figure = _figure(8, 3.4)
    ax = figure.add_subplot()
    xs = range(len(rows))
    ax.bar(
        [x - 0.2 for x in xs],
        [(r["predicted_ram"] or 0) / GIB for r in rows],
        width=0.4,
        color="#b0bec5",
        label="predicted (declared bounds)",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [(r["measured_ram"] or 0) / GIB for r in rows],
        width=0.4,
        color="#1565c0",
        label="measured (bisected)",
    )
    if rows:
        ax.axhline(rows[0]["final_bytes"] / GIB, color="#2e7d32", linestyle="--", label="final device bytes")
    ax.set_xticks(list(xs), [r["loader"] for r in rows], rotation=15)
    ax.set_ylabel("board RAM, GiB")
    ax.set_title("smallest board each variant fits on")
    ax.legend(fontsize=8)
    return "threshold", _svg(figure, f"threshold-{index}")
