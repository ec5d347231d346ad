# Stage 4: Figures 2-5 as PDF with a PNG beside it, drawn from recorded folders only
# (eqp.figures). Each figure states the preset (demo or paper) in its title.


rule fig2:
    input:
        PLAN.figure_inputs("fig2"),
    output:
        pdf=report(
            "figures/fig2.pdf",
            caption="../report/fig2.rst",
            category="Figures",
            labels={"figure": "Fig. 2", "format": "PDF"},
        ),
        png=report(
            "figures/fig2.png",
            caption="../report/fig2.rst",
            category="Figures",
            labels={"figure": "Fig. 2", "format": "PNG"},
        ),
    params:
        figure="fig2",
        inputs=PLAN.figure_groups("fig2"),
        preset=PLAN.preset,
    log:
        "logs/figures/fig2.log",
    benchmark:
        "benchmarks/runs/figures/fig2.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure.py"


rule fig3:
    input:
        PLAN.figure_inputs("fig3"),
    output:
        pdf=report(
            "figures/fig3.pdf",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "Fig. 3", "format": "PDF"},
        ),
        png=report(
            "figures/fig3.png",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "Fig. 3", "format": "PNG"},
        ),
    params:
        figure="fig3",
        inputs=PLAN.figure_groups("fig3"),
        preset=PLAN.preset,
    log:
        "logs/figures/fig3.log",
    benchmark:
        "benchmarks/runs/figures/fig3.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure.py"


rule fig4:
    input:
        PLAN.figure_inputs("fig4"),
    output:
        pdf=report(
            "figures/fig4.pdf",
            caption="../report/fig4.rst",
            category="Figures",
            labels={"figure": "Fig. 4", "format": "PDF"},
        ),
        png=report(
            "figures/fig4.png",
            caption="../report/fig4.rst",
            category="Figures",
            labels={"figure": "Fig. 4", "format": "PNG"},
        ),
    params:
        figure="fig4",
        inputs=PLAN.sweep_folders(),
        preset=PLAN.preset,
    log:
        "logs/figures/fig4.log",
    benchmark:
        "benchmarks/runs/figures/fig4.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/figure.py"


rule fig5:
    input:
        PLAN.figure_inputs("fig5"),
    output:
        pdf=report(
            "figures/fig5.pdf",
            caption="../report/fig5.rst",
            category="Figures",
            labels={"figure": "Fig. 5", "format": "PDF"},
        ),
        png=report(
            "figures/fig5.png",
            caption="../report/fig5.rst",
            category="Figures",
            labels={"figure": "Fig. 5", "format": "PNG"},
        ),
    params:
        figure="fig5",
        inputs=PLAN.figure_groups("fig5"),
        preset=PLAN.preset,
    log:
        "logs/figures/fig5.log",
    benchmark:
        "benchmarks/runs/figures/fig5.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../../scripts/figure.py"
