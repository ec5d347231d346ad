"""Snakemake script of runs_index: results/runs.tsv from every run folder (eqp.runs)."""

from eqp.outputs.runs import write_runs_index
from eqp.pipeline import logged

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

with logged(smk.log[0], writes_to=smk.output):
    write_runs_index(smk.params.folders, smk.output[0], base=smk.params.results_dir)
