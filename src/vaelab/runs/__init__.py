"""Runs: the run directory on disk (weights, checkpoint, metrics, results), its lock,
``load_run``, and a run exported as a model folder or shared on the Hugging Face Hub.

May import: base, models.
"""
