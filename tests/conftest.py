"""Our own test suite names misbehaving loaders by module path (``tests.harness.loaders.odd_loaders:NAME``). Workers run
with ``python -P`` and do not search the current folder, so the checkout is named as a loader folder, as a user
would name theirs (README: "Your own loader")."""

import os
from pathlib import Path

os.environ.setdefault("MALI_HIL_LOADER_PATH", str(Path(__file__).resolve().parents[1]))
