"""mali-hil as a guest in other people's projects: it claims no generic import name, loading its pytest plugin
imports nothing heavy and changes no hypothesis setting, and the built wheel (no source tree anywhere) runs the
main job."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[3]
# not hypothesis: its own pytest plugin imports it at every session's terminal summary
HEAVY = ("tinygrad", "ml_dtypes", "numpy", "pyopencl", "safetensors")
SOURCE_DIRS = ("src", "harness", "emulator", "tests", "benchmarks")
MODULE_PATH = re.compile(r"(harness|emulator)(\.[A-Za-z_]\w*)+(:[\w.]+)?\Z")


def _clean_env(**extra: str) -> dict[str, str]:
    # as a user's shell has it: PYTEST_CURRENT_TEST (set while this test runs) makes hypothesis' own plugin import
    # hypothesis in a nested pytest, which would blame us for it
    drop = ("CI", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("PYTEST_", "HYPOTHESIS_"))}
    return {**env, **extra}


def test_no_module_is_imported_by_a_generic_top_level_name() -> None:
    """Every import of our own code goes through ``mali_hil``; ``harness`` and ``emulator`` exist as folders only."""
    offenders = []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.match(node.value):
                    names = [node.value]  # "harness.worker", "emulator.info:main": a module named in a string
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                              if name.split(".")[0] in ("harness", "emulator")]  # fmt: skip
    assert not offenders, "imports by a generic top-level name:\n" + "\n".join(offenders)


@pytest.mark.parametrize("args", [("--version",), ("--collect-only", "-q")], ids=["version", "collect"])
def test_pytest_startup_imports_nothing_heavy(tmp_path: Path, args: tuple[str, ...]) -> None:
    """In a project with no mali-hil tests: ``--version`` imports no plugin at all, a collection loads ours (and
    configures it) without numpy, tinygrad, OpenCL or hypothesis."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pytest", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_clean_env())  # fmt: skip
    assert done.returncode in (0, pytest.ExitCode.NO_TESTS_COLLECTED), done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    if "--collect-only" in args:
        # the plugin module itself goes through pytest's assertion rewriter, which -X importtime does not log;
        # what its pytest_configure imports shows that it was loaded and configured
        assert "mali_hil.harness.plugin.session" in imported, "the plugin was not configured: the check proves nothing"
        assert "mali_hil.harness.devices.device" not in imported, "the device machinery was imported at startup"
    heavy = sorted(name for name in imported if name.split(".")[0] in HEAVY)
    assert not heavy, f"`pytest {' '.join(args)}` imported {heavy[:10]}"


USERS_TESTS = """
from datetime import timedelta
from hypothesis import given, settings, strategies as st

seen = []

@given(st.integers())
def test_runs_hypothesis_defaults(value):
    seen.append(value)

def test_default_settings_are_hypothesis_own():
    assert settings.default.max_examples == 100
    assert settings.get_current_profile_name() == ("ci" if EXPECT_CI else "default")
    assert settings.default.deadline == (None if EXPECT_CI else timedelta(milliseconds=200))
    assert len(seen) == 100

def test_mali_hil_is_loaded(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("mali_hil")
"""


@pytest.mark.parametrize("ci", [False, True], ids=["dev", "ci"])
def test_a_users_hypothesis_tests_keep_hypothesis_settings(pytester: pytest.Pytester, ci: bool) -> None:
    pytester.makepyfile(test_users=f"EXPECT_CI = {ci}\n" + USERS_TESTS)
    env = _clean_env(**({"CI": "true"} if ci else {}))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q"],
                          cwd=pytester.path, capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout and "mali-hil" not in done.stdout, done.stdout[-2000:]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the built wheel installed (not editable), its Python started outside any source tree."""
    where = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(where / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list((where / "dist").glob("mali_hil-*.whl"))
    assert len(wheels) == 1, wheels
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              str(wheels[0])], capture_output=True, text=True, timeout=900)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def test_the_wheel_holds_the_package_under_one_name(wheel_venv: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib.util, json, sys
        import mali_hil.harness.plugin.hooks, mali_hil.properties
        from mali_hil.emulator.profile import available_profiles
        from mali_hil.emulator.build import SOURCE
        print(json.dumps({"generic": [n for n in ("harness", "emulator") if importlib.util.find_spec(n)],
                          "suite": mali_hil.properties.__file__, "profiles": available_profiles(),
                          "layer_source": SOURCE.is_file(), "path": sys.path}))
        """
    )
    done = subprocess.run([str(wheel_venv), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env(), timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    facts = json.loads(done.stdout)
    assert facts["generic"] == [], f"the wheel installs generic top-level names {facts['generic']}"
    assert "site-packages" in facts["suite"] and str(ROOT) not in facts["suite"]
    assert {"mali-g610", "mali-g52", "mali-t860"} <= set(facts["profiles"]) and facts["layer_source"]
    assert not any(str(ROOT) in entry for entry in facts["path"])


def test_the_wheel_runs_the_main_job(wheel_venv: Path, tmp_path: Path) -> None:
    """``mali-hil run`` from the wheel finds its suite, runs it on the emulated Mali and prints the table (one
    property and one loader, to keep this test short; the README's first command runs it all)."""
    mali_hil = wheel_venv.parent / "mali-hil"
    done = subprocess.run([str(mali_hil), "run", "--loader", "chunked", "--", "-k", "test_same_job_twice"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env=_clean_env())  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "1 passed" in out, out[-3000:]
    assert "mali-hil: loader variants" in out and "chunked" in out.split("mali-hil: loader variants")[1], out[-3000:]
