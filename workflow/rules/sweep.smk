# Stage 3: the bypass-p sweep of Figure 4, one job per (p, seed) on the settings of
# config["sweep"]["base"] with bypass_p = p; folders results/sweep/p{p:.6f}/seed{seed}/.


rule train_sweep_point:
    input:
        lambda wildcards: PLAN.data_inputs(PLAN.sweep_settings(wildcards.p, wildcards.seed)),
    output:
        **folder_outputs(f"{RESULTS}/sweep/p{{p}}/seed{{seed}}"),
    log:
        "logs/sweep/p{p}/seed{seed}.log",
    benchmark:
        "benchmarks/runs/sweep/p{p}/seed{seed}.tsv"
    threads: PLAN.threads_per_job
    resources:
        **PLAN.gpu_resources(),
        mem_mb=lambda wildcards: PLAN.sweep_resources(wildcards.p, wildcards.seed)["mem_mb"],
        runtime=lambda wildcards: PLAN.sweep_resources(wildcards.p, wildcards.seed)["runtime"],
    params:
        job=lambda wildcards: PLAN.sweep_params(wildcards.p, wildcards.seed),
        data_root=lambda wildcards: PLAN.data_root(PLAN.sweep_settings(wildcards.p, wildcards.seed)),
        checkpoint=lambda wildcards: PLAN.sweep_checkpoint(wildcards.p, wildcards.seed),
    script:
        "../../scripts/train.py"
