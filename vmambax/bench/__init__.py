"""Benchmarks behind ``vmambax bench <name>``; results go into docs/benchmarks.md by hand."""
