"""Snakemake script of job_benchmarks: every job's runtime and memory (eqp.runs)."""

from eqp.outputs.runs import write_job_benchmarks
from eqp.pipeline import logged

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

with logged(smk.log[0], writes_to=smk.output):
    write_job_benchmarks(smk.params.files, smk.output[0])
