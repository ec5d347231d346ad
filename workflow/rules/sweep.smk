# Stage 3: the bypass-p sweep of Figure 4 on the settings of config["sweep"]["base"] with
# bypass_p = p; folders results/sweep/p{p:.6f}/seed{seed}/. One job per (p, seed), or, with
# sweep.ensemble on (true, or auto on a CUDA device), one job per seed that trains every point
# in lockstep as one stacked batch (eqp.ensemble) and writes the same folders. Only one of the
# two rules exists for a config, so every sweep file has exactly one producer.

if PLAN.sweep_ensemble:

    rule train_sweep_ensemble:
        input:
            lambda wildcards: PLAN.data_inputs(
                PLAN.sweep_settings(PLAN.sweep_labels[0], wildcards.seed)
            ),
        output:
            PLAN.ensemble_outputs("{seed}"),
        log:
            "logs/sweep/ensemble/seed{seed}.log",
        benchmark:
            "benchmarks/runs/sweep/ensemble/seed{seed}.tsv"
        threads: 1  # run_ensemble keeps torch on one thread
        resources:
            **PLAN.gpu_resources(),
            mem_mb=lambda wildcards: PLAN.ensemble_resources(wildcards.seed)["mem_mb"],
            runtime=lambda wildcards: PLAN.ensemble_resources(wildcards.seed)["runtime"],
        params:
            members=lambda wildcards: PLAN.ensemble_params(wildcards.seed),
            folders=lambda wildcards: PLAN.ensemble_folders(wildcards.seed),
            data_root=lambda wildcards: PLAN.data_root(
                PLAN.sweep_settings(PLAN.sweep_labels[0], wildcards.seed)
            ),
            checkpoints=lambda wildcards: PLAN.ensemble_checkpoints(wildcards.seed),
        script:
            "../../scripts/train_ensemble.py"

else:

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
            data_root=lambda wildcards: PLAN.data_root(
                PLAN.sweep_settings(wildcards.p, wildcards.seed)
            ),
            checkpoint=lambda wildcards: PLAN.sweep_checkpoint(wildcards.p, wildcards.seed),
        script:
            "../../scripts/train.py"
