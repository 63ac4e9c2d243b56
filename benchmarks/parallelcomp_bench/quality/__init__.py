"""Long-context quality evaluation: RULER-compatible tasks, passkey and needle grids, baselines."""
