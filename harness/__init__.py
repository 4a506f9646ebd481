"""mali-hil's harness: devices, workers, loaders under test, checkpoints, oracles, reports and the CLI."""
