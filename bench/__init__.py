"""Benchmarks (`make bench` runs `python -m bench`); each module is runnable on its own."""
