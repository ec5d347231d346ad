# Stage 1: MNIST and Fashion-MNIST raw files, md5-verified, into config["data_dir"].
# Routes (eqp.data.sources): files already there, config["dataset_source_dir"] (no download),
# torchvision's download, then offline fallbacks. Diabetes and wine come with scikit-learn.


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
