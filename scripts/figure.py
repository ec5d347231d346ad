"""Snakemake script of the figure rule: one figure from recorded folders (eqp.outputs.figures)."""

from eqp.pipeline import draw_figure, logged

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

with logged(smk.log[0], writes_to=smk.output):
    draw_figure(smk.wildcards.figure, smk.params.inputs, smk.output.pdf, smk.params.preset)
