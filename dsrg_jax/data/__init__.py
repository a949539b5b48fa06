"""Data: datasets, cue files, transforms and the input pipeline (I/O lives here)."""
