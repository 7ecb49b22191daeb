"""Whole-storage work: the one-command build, verification checklist, manifest, reports."""
