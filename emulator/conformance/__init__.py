"""External test suites (pyopencl's own, tinygrad's) as a standing fidelity check of the emulated Mali.

Each suite runs from its published sdist on plain PoCL and on each profile's board; every difference from plain
PoCL must be listed, with its reason, in that profile's expectations file (``expectations/PROFILE.txt``), as
Mesa's CI keeps per-GPU lists; a difference the file does not list fails the check, and so does a listed one that
no longer happens.
"""
