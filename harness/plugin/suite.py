"""Where the property suite is: it ships inside the package (``mali_hil.properties``, from tests/properties), so
a wheel alone can run it, on a board or in someone else's CI."""

from __future__ import annotations

from pathlib import Path

from mali_hil.errors import MaliHilError

SUITE_PACKAGE = "mali_hil.properties"


def suite_path() -> Path:
    """The installed property suite's folder (in a checkout, tests/properties; in a wheel, inside mali_hil)."""
    from importlib.util import find_spec

    spec = find_spec(SUITE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MaliHilError(f"the property suite ({SUITE_PACKAGE}) is not installed: reinstall mali-hil")
    return Path(next(iter(spec.submodule_search_locations)))
