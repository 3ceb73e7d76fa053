"""Evaluations: accuracy here; transfer, correlation, faithfulness, OOD and robustness beside it."""
