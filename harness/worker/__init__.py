"""The worker that runs load jobs on the device's side (:mod:`.serve`) and the protocol both sides speak
(:mod:`.protocol`). Start one with ``python -m mali_hil.harness.worker``."""
