"""Evaluation: preference metrics, generation, judges, adjusted win rates."""
