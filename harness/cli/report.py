"""`mali-hil report`: one self-contained HTML page (and a Markdown summary) from results files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="an HTML report (charts included) and a Markdown summary of results files")
    parser.add_argument(
        "results", nargs="+", help="cluster/threshold results (JSON), run --results (JSON lines), run --junitxml (XML)"
    )
    parser.add_argument("-o", "--output", default="report.html", help="the HTML page to write (report.html)")
    parser.add_argument("--markdown", default=None, help="the Markdown summary (default: the page's name, .md)")
    parser.add_argument("--title", default="mali-hil report")
    parser.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from mali_hil.errors import MaliHilError
    from mali_hil.harness.reports.inputs import read_inputs

    try:
        import matplotlib  # noqa: F401  (the charts need it: say so here, not from deep inside)

        from mali_hil.harness.reports.render import markdown, page
    except ImportError as exc:
        raise MaliHilError(f"mali-hil report needs matplotlib ({exc}): pip install 'mali-hil[report]'") from None
    from mali_hil.harness.records.results_file import check_writable

    out = Path(args.output)
    md = Path(args.markdown) if args.markdown else out.with_suffix(".md")
    for what, path in (("--output", out), ("--markdown", md)):
        check_writable(path, what)
    inputs = read_inputs(args.results)
    for path, text in ((out, page(inputs, args.title)), (md, markdown(inputs, args.title))):
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    print(f"wrote {out} and {md}")
    return 0
