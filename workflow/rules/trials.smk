# Stage 2: one job per (named trial, seed); its folder is results/trials/{trial}/seed{seed}/.
# The resolved settings are a param, so a changed setting reruns exactly its trial. A
# checkpoint outside the declared outputs lets a killed job resume after its last epoch.


rule train_trial:
    input:
        lambda wildcards: PLAN.data_inputs(PLAN.trial_settings(wildcards.trial, wildcards.seed)),
    output:
        **folder_outputs(f"{RESULTS}/trials/{{trial}}/seed{{seed}}"),
    log:
        "logs/trials/{trial}/seed{seed}.log",
    benchmark:
        "benchmarks/runs/trials/{trial}/seed{seed}.tsv"
    threads: PLAN.threads_per_job
    resources:
        **PLAN.gpu_resources(),
        mem_mb=lambda wildcards: PLAN.trial_resources(wildcards.trial, wildcards.seed)["mem_mb"],
        runtime=lambda wildcards: PLAN.trial_resources(wildcards.trial, wildcards.seed)["runtime"],
    params:
        job=lambda wildcards: PLAN.trial_params(wildcards.trial, wildcards.seed),
        data_root=lambda wildcards: PLAN.data_root(
            PLAN.trial_settings(wildcards.trial, wildcards.seed)
        ),
        checkpoint=lambda wildcards: PLAN.trial_checkpoint(wildcards.trial, wildcards.seed),
    script:
        "../../scripts/train.py"
