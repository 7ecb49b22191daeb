"""Storage v2 for Weighted Multi-Token Prediction (WMTP) research."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("weighted-mtp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
