"""Training: one trainer behind every experiment (Baseline MTP, Verifiable Critic with its
critic, Rho-1 with its tuned reference).

`config` (the one typed configuration), `experiments` (the table: per experiment its model,
objective and final writer), `trainer` (the one loop: validation, metrics, checkpoints,
resume), `suite` (all five in order, then the comparison). The table's parts: `builders`
(one per kind of model), `objectives` (what a step computes), `weightings` (the policy's
per-token weights: `advantages` for the Verifiable Critic, `rho1` for Rho-1, `critic` the
value model), `losses` (the weighted MTP loss), `final` (what `final/` holds), and
`helper_models` / `frozen` (the weighted experiments' frozen helpers). Around them: `data`,
`distributed`, `collectives`, `lora`, `checkpoint`, `loggers`, `runs`, `plot`.
Importing this package imports no torch; the modules that need it import it themselves.
"""
