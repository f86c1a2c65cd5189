"""Benchmarks of offloader against in-run references (see run.py)."""
