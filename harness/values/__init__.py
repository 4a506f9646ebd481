"""What a load's values are, and what they must be: digests of device tensors and the independent oracles."""
