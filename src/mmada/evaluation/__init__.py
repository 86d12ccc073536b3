"""Evaluation: scoring pipelines with shared judges (`world` for the tiny world's suite)."""
