# Stage 4: Figures 2-5 as PDF with a PNG beside it, drawn from recorded folders only
# (eqp.outputs.figures), one job per figure of one rule. Each figure states its preset in its
# title; report/figure.rst holds the four captions.


rule figure:
    input:
        lambda wildcards: PLAN.figure_inputs(wildcards.figure),
    output:
        pdf=report(
            "figures/{figure}.pdf",
            caption="../report/figure.rst",
            category="Figures",
            labels=figure_labels("PDF"),
        ),
        png=report(
            "figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels=figure_labels("PNG"),
        ),
    log:
        "logs/figures/{figure}.log",
    benchmark:
        "benchmarks/runs/figures/{figure}.tsv"
    wildcard_constraints:
        figure="|".join(pipeline.FIGURES),
    threads: 1
    resources:
        mem_mb=lambda wildcards: pipeline.FIGURE_MEM_MB[wildcards.figure],
        runtime=10,
    params:
        inputs=lambda wildcards: PLAN.figure_sources(wildcards.figure),
        preset=PLAN.preset,
    script:
        "../../scripts/figure.py"
