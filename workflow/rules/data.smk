# Stage 1: MNIST and Fashion-MNIST raw files, md5-verified, into config["data_dir"].
# Routes (eqp.data.sources): files already there, config["dataset_source_dir"] (no download),
# torchvision's download, then offline fallbacks. Diabetes and wine come with scikit-learn.
# Files fetched earlier are checked whenever the DAG is built (cheaply: by size and time
# against checksums.json, hashed only when they differ); one that no longer matches stops the
# run with one line naming it and the fix, before any job reads it.
from eqp.data.sources import stale_files

for _name in pipeline.DOWNLOADED:
    if pipeline.DOWNLOADED[_name] in PLAN.fetched_folders():
        _problem = stale_files(_name, PLAN.data_dir)
        if _problem:
            raise WorkflowError(_problem)


rule fetch_dataset:
    output:
        f"{PLAN.data_dir}/{{folder}}/raw/checksums.json",
    log:
        "logs/data/{folder}.log",
    benchmark:
        "benchmarks/runs/data/{folder}.tsv"
    wildcard_constraints:
        folder="|".join(pipeline.DOWNLOADED.values()),
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    params:
        name=lambda wildcards: pipeline.dataset_of_folder(wildcards.folder),
        root=lambda wildcards, output: Path(output[0]).parents[2],
    script:
        "../../scripts/fetch_dataset.py"
