"""Benchmarks: each compares a SIPAS path with a baseline run side by side on the same machine
and prints ratios. ``make bench`` runs them all and writes docs/benchmarks.md. Never timed
assertions in tests: speed depends on the machine, ratios much less."""
