"""Evaluation and speed benchmarks of parallelcomp-llm (not part of the installed package)."""
