"""Which parameters train when, and how: the strategy registry, freezing and BatchNorm, probes, adapters."""
