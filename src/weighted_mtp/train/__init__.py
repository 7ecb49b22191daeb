"""Training: the one trainer behind the Baseline MTP, Verifiable Critic and Rho-1 experiments.

Modules: `data` (records to token batches), `weighting` (pluggable per-token weights),
`losses` (the weighted MTP loss and the sequential-head backward), `config` (typed run
configuration), `distributed`, `lora`, `checkpoint`, `runs` and `loop` (the trainer); the
weighted experiments' `advantages` (Verifiable Critic weights), `critic` (the value model),
`rho1` (Rho-1 selection), with `collectives` (global statistics) and `frozen` (helper models).
Importing this package imports no torch; the modules that need it import it themselves.
"""
