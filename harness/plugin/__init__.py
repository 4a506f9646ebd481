"""The pytest plugin (:mod:`.hooks`, entry point ``pytest11``) and what it keeps for a run: the session, how
``mali-hil run`` spreads the suite over workers, and its progress line."""
