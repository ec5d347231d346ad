"""Snakemake script of every training rule: one trial or an ensemble (eqp.pipeline)."""

from eqp.pipeline import run_training_job

run_training_job(snakemake)  # noqa: F821  (injected by Snakemake's script directive)
