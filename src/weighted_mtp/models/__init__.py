"""Models: upstream download, streaming conversion, the MTP adapter, micro models, verify."""
