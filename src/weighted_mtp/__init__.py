"""Weighted Multi-Token Prediction (WMTP) research on code models: a verified storage of
models and datasets, training experiments on it, and their pass@k evaluation."""


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed metadata on first use (importlib.metadata
    costs ~50 ms that `import weighted_mtp` and `wmtp --help` do not need)."""
    if name != "__version__":
        raise AttributeError(f"module 'weighted_mtp' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("weighted-mtp")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"
