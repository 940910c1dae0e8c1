"""Data: image files, chip/mask pairs, the split manifest, ground-aware splits, synthetic data."""
