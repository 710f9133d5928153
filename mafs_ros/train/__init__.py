"""Offline training of MAFS: the recipe, data, losses, task weighting and the training loops (Stage I and II)."""
