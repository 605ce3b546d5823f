"""Synthetic shape data and the training of the small built-in checkpoints in `models/` (see training/README.md)."""
