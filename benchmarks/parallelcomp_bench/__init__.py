"""Evaluation and speed benchmarks of parallelcomp-llm, using only the engine's public API and its
stage seams. Result files go to `benchmarks/results/` of the checkout (`RESULTS_DIR`)."""

from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
"""Where result files are written and read: `benchmarks/results/` next to this package."""
