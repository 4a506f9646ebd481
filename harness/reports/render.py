"""One self-contained HTML page (inline CSS and SVG charts, nothing fetched) and a Markdown summary of it.

The page carries one short inline script: it counts the charts that have laid out to a visible size and writes
the count on the root element (``data-charts-rendered``), so a headless browser's DOM dump shows whether the
charts really rendered, not only that their markup is present.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from mali_hil.harness.reports import charts, tables
from mali_hil.harness.reports.inputs import ReportInputs
from mali_hil.harness.reports.tables import Table

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1b1b1b; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; } th { background: #f3f3f3; }
td.fits { color: #2e7d32; } td.device-oom { color: #ef6c00; } td.oom-killed { color: #c62828; font-weight: 600; }
figure.chart { margin: 1em 0; } figure.chart svg { max-width: 100%; height: auto; }
p.note { color: #555; font-size: 12px; }
"""

CHECK = """
(function () {
  var charts = document.querySelectorAll('figure.chart svg');
  var shown = 0;
  charts.forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    if (box.width > 50 && box.height > 50) shown++;
  });
  document.documentElement.setAttribute('data-charts-rendered', String(shown));
})();
"""


@dataclass
class Section:
    title: str
    tables: list[Table] = field(default_factory=list)
    charts: list[tuple[str, str]] = field(default_factory=list)


def sections(inputs: ReportInputs, with_charts: bool = True) -> list[Section]:
    out = []
    variants = tables.run_table(inputs)
    if variants is not None:
        out.append(Section("Loader variants", [variants], charts.peaks_per_variant(inputs) if with_charts else []))
    for i, doc in enumerate(inputs.clusters):
        out.append(Section("Cluster", tables.cluster_tables(doc), charts.cluster_nodes(doc, i) if with_charts else []))
    for i, doc in enumerate(inputs.thresholds):
        out.append(
            Section("Threshold", [tables.threshold_table(doc)], [charts.thresholds(doc, i)] if with_charts else [])
        )
    for doc in inputs.board_diffs:
        out.append(Section("Board and twin", [tables.board_diff_table(doc)]))
    out.append(Section("Environment", [tables.environment_table(inputs)]))
    return out


def page(inputs: ReportInputs, title: str = "mali-hil report") -> str:
    parts = [
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for section in sections(inputs):
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        for table in section.tables:
            parts.append(_html_table(table))
        for name, svg in section.charts:
            parts.append(
                f"<figure class='chart' data-chart='{html.escape(name, quote=True)}'>{svg}"
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append(f"<script>{CHECK}</script></body></html>\n")
    return "".join(parts)


def markdown(inputs: ReportInputs, title: str = "mali-hil report") -> str:
    lines = [f"# {title}", ""]
    for section in sections(inputs, with_charts=False):
        lines += [f"## {section.title}", ""]
        for table in section.tables:
            lines += [f"**{_md(table.title)}**", ""]
            lines.append("| " + " | ".join(_md(h) for h in table.headers) + " |")
            lines.append("|" + " --- |" * len(table.headers))
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in table.rows]
            lines += [""] + [f"_{_md(note)}_" for note in table.notes] + ([""] if table.notes else [])
    return "\n".join(lines) + "\n"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = "".join(
            f"<td class='{html.escape(c) if c in tables_verdicts() else ''}'>{html.escape(c)}</td>" for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in table.notes)
    rows = "".join(body)
    return (
        f"<h3>{html.escape(table.title)}</h3>{notes}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


def tables_verdicts() -> tuple[str, ...]:
    return ("fits", "device-oom", "oom-killed")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
