"""Storage v2: where every asset lives, and how files are written and hashed safely."""
