"""The sandbox that runs generated code: one module per part.

- `pool`: the `Sandbox` the evaluator uses (its slots and workers, `Job`, `Outcome`,
  `SandboxLimits`), bubblewrap's discovery, the slots' identities and the unconfined warning;
- `worker`: the process each slot runs (`python -I -B -m weighted_mtp.eval.sandbox.worker`),
  which confines and runs the samples and their judges;
- `codec`: the wire format between a sample and its judge (frames, values as tagged JSON);
- `judge`: the protocol over it: the sample's side serves, the judge's side runs the tests;
- `isolation`: the namespaces and private read-only root (bubblewrap's arguments);
- `seccomp`: the system-call filter of samples and judges;
- `cgroup`: the per-slot cgroups that bound a sample's processes together.

Import from the modules. This file re-exports nothing on purpose: every worker starts as a
module of this package, so whatever it imports is loaded into the process that hosts
untrusted samples. What holds where is in docs/evaluation-sandbox.md.
"""
