"""`mali-hil cluster`, `threshold` and `report` as a user runs them: real boards, real loads, a real browser.

The model is small (a Llama-shaped config.json with a 200k vocabulary, so embedding and head dominate as in
Llama-3-8B) on 224 MiB boards: exo's 2024 rule puts ~196 MiB of fp16 embedding and head on every node, which
cannot fit; the corrected rule puts ~99 MiB on the first and the last node only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mali_hil.harness.records.results import LoadResult, Status
from tests.browser import Browser, chromium_available

BOARD = "emulated-mali:mali-g610:224MiB"
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 3, "vocab_size": 200000, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}  # fmt: skip


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mali_hil.harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "CI": "1"})  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def cluster_doc(work: Path) -> dict:
    (work / "config.json").write_text(json.dumps(CONFIG))
    done = cli("cluster", "--model", str(work / "config.json"), "--nodes", "2", "--device", BOARD, "--loader",
               "chunked", "--chunk", "8MiB", "--fill", "constant", "--cache-dir", str(work / "cache"),
               "--results", str(work / "cluster.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "━" not in done.stderr  # no progress bars in CI logs
    return json.loads((work / "cluster.json").read_text())


@pytest.fixture(scope="module")
def threshold_doc(work: Path, cluster_doc: dict) -> dict:
    done = cli("threshold", cluster_doc["checkpoint"]["path"], "--loader", "chunked", "--shard", "1-2",
               "--chunk", "8MiB", "--device", BOARD, "--results", str(work / "threshold.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chunked" in done.stdout
    return json.loads((work / "threshold.json").read_text())


def test_exo_2024_rule_fails_every_node_and_the_corrected_rule_fits(cluster_doc: dict) -> None:
    rows = {(r["keep"], r["node"]): r for r in cluster_doc["results"]}
    assert [(r["node"], r["layers"]) for r in cluster_doc["results"][:2]] == [("node-00", [0, 0]), ("node-01", [1, 2])]
    for node in ("node-00", "node-01"):
        assert rows[("exo-2024", node)]["verdict"] in ("device-oom", "oom-killed")
        assert rows[("first-last", node)]["verdict"] == "fits"
        # what each node was charged with is what its loader really loaded
        record = LoadResult.from_dict(rows[("first-last", node)]["result"])
        assert record.status is Status.OK and record.bytes_loaded == rows[("first-last", node)]["final_bytes"]
        assert record.peak_unified_bytes <= record.ram_budget_bytes
    # the corrected rule splits the non-layer tensors: embedding first, head last
    assert rows[("first-last", "node-00")]["peak_tensor"]["name"] == "model.embed_tokens.weight"
    assert rows[("first-last", "node-01")]["peak_tensor"]["name"] == "lm_head.weight"
    assert rows[("exo-2024", "node-01")]["final_bytes"] > 1.9 * rows[("first-last", "node-01")]["final_bytes"]


def test_threshold_is_the_smallest_board_that_fits(threshold_doc: dict) -> None:
    (row,) = threshold_doc["thresholds"]
    measured, step = row["measured_ram"], threshold_doc["device"]["step"]
    assert measured is not None and measured % step == 0 and row["predicted_ram"] is not None
    verdicts = {p["ram"]: p["status"] for p in row["probes"]}
    assert verdicts[measured] == "ok"  # it fitted there, measured
    below = [ram for ram, status in verdicts.items() if ram < measured]
    assert all(verdicts[ram] in ("device-oom", "oom-killed") for ram in below)
    # either the board one step smaller was seen to fail, or it cannot hold the idle worker and the tensors
    floor = threshold_doc["idle_baseline_bytes"] + row["final_bytes"]
    assert measured - step in below or measured - step <= floor
    assert row["ratio_to_final"] == pytest.approx(measured / row["final_bytes"])


def test_report_renders_in_a_real_browser(work: Path, cluster_doc: dict, threshold_doc: dict) -> None:
    if chromium_available() and not os.environ.get("CI"):
        pytest.skip(chromium_available())
    # run records as `mali-hil run --results` writes them, and a JUnit XML with the plugin's properties
    with (work / "run.jsonl").open("w") as out:
        for r in cluster_doc["results"]:
            out.write(json.dumps({"test": f"tests/properties/test_fit.py::x[{r['node']}]", **r["result"]}) + "\n")
    (work / "junit.xml").write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="t" name="a"><properties>'
        '<property name="mali_hil.property" value="numerics"/><property name="mali_hil.loader" value="chunked"/>'
        '</properties></testcase><testcase classname="t" name="b"><properties>'
        '<property name="mali_hil.property" value="oom"/><property name="mali_hil.loader" value="chunked"/>'
        '</properties><failure message="x"/></testcase></testsuite></testsuites>'
    )
    inputs = [str(work / n) for n in ("cluster.json", "threshold.json", "run.jsonl", "junit.xml")]
    done = cli("report", *inputs, "-o", str(work / "report.html"))
    assert done.returncode == 0, done.stderr
    page = (work / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?https?:""", page)  # self-contained
    summary = (work / "report.md").read_text()
    assert "| exo-2024 | chunked | 0 of 2 |" in summary and "| first-last | chunked | 2 of 2 |" in summary
    assert "| chunked | pass | 1 failed |" in summary

    expressions = {
        "rendered": "Number(document.documentElement.getAttribute('data-charts-rendered'))",
        "charts": "document.querySelectorAll('figure.chart svg').length",
        "bars": "document.querySelectorAll('figure.chart svg path').length",
    }
    with Browser(work / "chromium-profile") as browser:
        seen = browser.check((work / "report.html").as_uri(), expressions)
        # the same check on a broken page finds its faults: it is not blind
        (work / "broken.html").write_text("<img src='missing.png'><script>console.error('x'); nope();</script>")
        broken = browser.check((work / "broken.html").as_uri(), {})
    assert seen.problems == []
    # peaks per variant, one cluster chart per keep rule, the threshold chart: all laid out at a visible size
    assert seen.values["charts"] == seen.values["rendered"] == 4
    assert seen.values["bars"] > 20
    assert len(broken.problems) == 3

    from PIL import Image

    (work / "report.png").write_bytes(seen.screenshot)
    image = Image.open(work / "report.png").convert("L")
    assert image.size[0] >= 1000 and image.size[1] > 1500  # the whole page, not the first screen
    assert len(image.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 16  # not a blank page
