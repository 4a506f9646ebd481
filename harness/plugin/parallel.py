"""How ``mali-hil run`` spreads the suite over pytest-xdist workers: one loader's tests stay in one process.

A pytest plugin that ``mali-hil run`` loads into its own pytest (``-p mali_hil.harness.plugin.parallel``, with ``-n``);
nobody else's pytest gets it, and without xdist it does nothing. Through xdist's own hook for this
(``pytest_xdist_make_scheduler``) it uses xdist's scope scheduling with a loader as the scope: each xdist worker
has its own device workers, whose tinygrad keeps the kernels it compiled, and the memory properties run a
variant's warm-up job once per worker before measuring it. Keeping a loader's tests together pays those once per
loader instead of once per loader and process. Tests of no single loader are scopes of their own and fill the
gaps. Test ids are not changed (xdist's ``loadgroup`` would append ``@group`` to every id in JUnit and results).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest


def loader_of(nodeid: str, loaders: Sequence[str]) -> str | None:
    """The loader variant a test id is parametrized with (its ``[...]`` part names it between dashes), if any."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    parts = f"-{nodeid[nodeid.index('[') + 1 : -1]}-"
    for loader in sorted(loaders, key=len, reverse=True):  # "fix_bf16-host" before a shorter name inside it
        if f"-{loader}-" in parts:
            return loader
    return None


def session_loaders(config: pytest.Config) -> Sequence[str]:
    from mali_hil.harness.plugin.session import SESSION_KEY

    session = config.stash.get(SESSION_KEY, None)
    return session.loaders if session is not None else ()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    loaders = session_loaders(config)

    class ByLoader(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            loader = loader_of(nodeid, loaders)
            return f"loader {loader}" if loader is not None else nodeid

    return ByLoader(config, log)
