"""The storage: where every asset lives, and how files are written and hashed safely."""
