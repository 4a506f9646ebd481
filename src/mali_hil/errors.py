"""The one root of every error mali-hil raises on purpose.

Each error names the bad value and the fix, so a user never has to read a traceback from deep inside.
Misuse errors also inherit the matching builtin (as hypothesis does), so ``except ValueError`` still works.
The emulator's, the board runtime's and the harness's own errors are here; the checkpoint validator's one class
per rule (``harness/checkpoints/faults.py``) and the farm's (``harness/farm/failures.py``) stay with their code.
"""

from __future__ import annotations


class MaliHilError(Exception):
    """Root of all mali-hil errors."""


class ProfileError(MaliHilError, ValueError):
    """A device profile is unknown or malformed."""


class ExpectationsError(MaliHilError, ValueError):
    """An expectations list (known failures, flakes, skips) has a malformed entry."""


class BudgetError(MaliHilError, ValueError):
    """A RAM budget or memory size cannot be honoured on this machine."""


class BackendError(MaliHilError, RuntimeError):
    """The OpenCL backend (ICD loader, PoCL, headers, compiler) is missing or broken."""


class LayerBuildError(BackendError):
    """Our OpenCL layer could not be compiled."""


class CacheError(BackendError):
    """A cache a job loads code from (compiled kernels, our layer) is not private to this user: anyone able to
    write there could plant code that runs as the harness's user."""


class LayerCacheError(CacheError):
    """The layer cache folder is not private to this user: anyone able to write there could plant code."""


class JobSpecError(MaliHilError, ValueError):
    """A job's parameters (shard range, sizes, dtype) are invalid."""


class DeviceSpecError(MaliHilError, ValueError):
    """A --device value names no known device kind or is malformed."""


class WorkerError(MaliHilError, RuntimeError):
    """The device-side worker could not be started or spoke out of protocol."""


class ResultsFileError(MaliHilError, OSError):
    """A results or report file cannot be written (a missing or read-only folder, a full disk); names the path."""
