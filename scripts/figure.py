"""Snakemake script of fig2..fig5: draw one figure from recorded folders (eqp.figures)."""

from eqp.pipeline import draw_figure, logged

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

with logged(smk.log[0]):
    draw_figure(smk.params.figure, smk.params.inputs, smk.output.pdf, smk.params.preset)
