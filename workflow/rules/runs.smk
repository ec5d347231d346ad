# Stage 6: the runs index, one row per trial and sweep folder from its summary.json
# (eqp.outputs.runs), and the runtime and memory of every job from its benchmark file. Both are in
# the report; `python -m eqp runs results` prints the index of any results folder.


rule runs_index:
    input:
        [f"{folder}/summary.json" for folder in PLAN.run_folders()],
    output:
        report(
            f"{RESULTS}/runs.tsv",
            caption="../report/runs.rst",
            category="Runs",
            labels={"table": "runs index"},
        ),
    log:
        "logs/runs_index.log",
    benchmark:
        "benchmarks/runs/runs_index.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        folders=lambda wildcards, input: [str(Path(f).parent) for f in input],
        results_dir=lambda wildcards, output: str(Path(output[0]).parent),
    script:
        "../../scripts/runs_index.py"


# The benchmark files are read, not declared as inputs: a missing one (say, benchmarks/
# deleted) must not make Snakemake rerun the job that wrote it. The inputs come after every
# other job (runs.tsv after every training job), so this runs last, and again after any rerun.
rule job_benchmarks:
    input:
        SUMMARIES,
    output:
        report(
            f"{RESULTS}/jobs.tsv",
            caption="../report/jobs.rst",
            category="Runs",
            labels={"table": "jobs: runtime and memory"},
        ),
    log:
        "logs/job_benchmarks.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        files=benchmark_files(),
    script:
        "../../scripts/job_benchmarks.py"
