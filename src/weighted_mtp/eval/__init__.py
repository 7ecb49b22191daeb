"""Evaluation: pass@k, the execution sandbox, scoring, generation and contamination.

Modules import torch only inside the functions that generate, so scoring samples and
`wmtp --help` stay fast.
"""
