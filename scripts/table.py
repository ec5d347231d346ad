"""Snakemake script of table1: Table 1 from recorded folders (eqp.outputs.table)."""

from eqp.pipeline import logged, write_table

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

with logged(smk.log[0], writes_to=smk.output):
    write_table(smk.params.groups, smk.output.csv, smk.output.md, smk.output.tex)
