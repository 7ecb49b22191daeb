"""Small upstream-format sources built in code: the offline demo, tests and benchmarks use
them in place of the hub, so every code path a real build takes runs without a network."""
