"""mali-hil: a hardware-in-the-loop harness and emulator for loading ML weights onto memory-starved ARM Mali GPUs.

Every import name lives under ``mali_hil`` so that installing mali-hil into someone's project claims no generic
name. The source tree keeps the layout that shows how a job flows; ``pyproject.toml`` maps it here:
``runtime/`` is ``mali_hil.runtime`` (what every board runs: supervisor, RAM enforcers, meter, the layer's
counters, the one verdict), ``emulator/`` is ``mali_hil.emulator`` (the emulated Mali only), ``harness/`` is
``mali_hil.harness`` and the property suite in ``tests/properties/`` ships as ``mali_hil.properties`` (so
``mali-hil run`` works from a wheel). The shared base lives here beside this file: ``errors`` (the one root),
``sizes``, ``paths`` (the cache folder) and ``wheel`` (the running build as a wheel, for boards and images).
Imports go one way: the base imports nothing of mali-hil's, the runtime only the base (and the emulator, lazily, on
an emulated board), the emulator the base and the runtime, the harness all of them. This file lives in ``src/``
so that a checkout's root on ``sys.path`` can never shadow the installed package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mali-hil")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
