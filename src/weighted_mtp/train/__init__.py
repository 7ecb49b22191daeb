"""Training: the one trainer behind the Baseline MTP, Verifiable Critic and Rho-1 experiments.

Modules: `data` (records to token batches), `weighting` (pluggable per-token weights),
`losses` (the weighted MTP loss and the sequential-head backward), `config` (typed run
configuration), `distributed`, `lora`, `checkpoint`, `runs` and `loop` (the trainer).
Importing this package imports no torch; the modules that need it import it themselves.
"""
