"""Evaluation: judges, metrics, prompt sets, runner, report."""
