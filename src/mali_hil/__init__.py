"""mali-hil: a hardware-in-the-loop harness and emulator for loading ML weights onto memory-starved ARM Mali GPUs.

Every import name lives under ``mali_hil`` so that installing mali-hil into someone's project claims no generic
name. The source tree keeps the layout that shows how a job flows; ``pyproject.toml`` maps it here:
``emulator/`` is ``mali_hil.emulator``, ``harness/`` is ``mali_hil.harness`` and the property suite in
``tests/properties/`` ships as ``mali_hil.properties`` (so ``mali-hil run`` works from a wheel). This file lives
in ``src/`` so that a checkout's root on ``sys.path`` can never shadow the installed package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mali-hil")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
