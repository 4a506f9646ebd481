"""The one root of every error mali-hil raises on purpose.

Each error names the bad value and the fix, so a user never has to read a traceback from deep inside.
Misuse errors also inherit the matching builtin (as hypothesis does), so ``except ValueError`` still works.
"""

from __future__ import annotations


class MaliHilError(Exception):
    """Root of all mali-hil errors."""


class ProfileError(MaliHilError, ValueError):
    """A device profile is unknown or malformed."""


class BudgetError(MaliHilError, ValueError):
    """A RAM budget or memory size cannot be honoured on this machine."""


class BackendError(MaliHilError, RuntimeError):
    """The OpenCL backend (ICD loader, PoCL, headers, compiler) is missing or broken."""


class LayerBuildError(BackendError):
    """Our OpenCL layer could not be compiled."""


class LayerCacheError(BackendError):
    """The layer cache folder is not private to this user: anyone able to write there could plant code."""
