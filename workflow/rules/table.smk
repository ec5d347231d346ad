# Stage 5: Table 1 (the 14 trials of the paper's table, all seeds) as CSV, Markdown and
# LaTeX, with the paper's numbers beside ours and the difference (eqp.outputs.table).


rule table1:
    input:
        PLAN.table_inputs(),
    output:
        csv=report(
            "tables/table1.csv",
            caption="../report/table1.rst",
            category="Table 1",
            labels={"table": "Table 1", "format": "CSV"},
        ),
        md=report(
            "tables/table1.md",
            caption="../report/table1.rst",
            category="Table 1",
            labels={"table": "Table 1", "format": "Markdown"},
        ),
        tex="tables/table1.tex",
    log:
        "logs/table1.log",
    benchmark:
        "benchmarks/runs/table1.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        groups=PLAN.table_groups(),
    script:
        "../../scripts/table.py"
