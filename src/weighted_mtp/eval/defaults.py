"""Every default of an evaluation, in one place: sampling, scoring and the comparison.

Constants only, so the commands' options read them at start-up without importing the
evaluation (`wmtp --help` stays fast).
"""

SAMPLES_PER_TASK = 20
TEMPERATURE = 0.2
TOP_P = 0.95
MAX_NEW_TOKENS = 512
SANDBOX_WORKERS = 2  # samples executed in parallel
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
