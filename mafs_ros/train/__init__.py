"""Offline training of MAFS: losses, task weighting and the training loops (spec §3, §4)."""
