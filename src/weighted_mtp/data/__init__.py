"""Datasets: upstream download, Alpaca-style preparation, splits, small sets, validation."""
