# Stage 2: the named trials, each seed in results/trials/{trial}/seed{seed}/. One job per
# (trial, seed); the resolved settings are a param, so a changed setting reruns exactly its
# trial, and a checkpoint outside the declared outputs lets a killed job resume after its last
# epoch. With trial_ensembles on (true, or auto on a CUDA device), the trials that can be
# stacked (eqp.stacking: same layer sizes, batch, steps and batch counts; Euler settling)
# train as one job per group and seed instead, rule train_trial_ensemble_<first trial of the
# group>, writing the same folders; train_trial makes only the others.

if PLAN.solo_trials:

    rule train_trial:
        input:
            lambda wildcards: PLAN.data_inputs(PLAN.trial_settings(wildcards.trial, wildcards.seed)),
        output:
            **folder_outputs(f"{RESULTS}/trials/{{trial}}/seed{{seed}}"),
        log:
            "logs/trials/{trial}/seed{seed}.log",
        benchmark:
            "benchmarks/runs/trials/{trial}/seed{seed}.tsv"
        wildcard_constraints:
            trial="|".join(PLAN.solo_trials),
        threads: PLAN.threads_per_job
        resources:
            **PLAN.gpu_resources(),
            mem_mb=lambda wildcards: PLAN.trial_resources(wildcards.trial, wildcards.seed)["mem_mb"],
            runtime=lambda wildcards: PLAN.trial_resources(wildcards.trial, wildcards.seed)[
                "runtime"
            ],
        params:
            job=lambda wildcards: PLAN.trial_params(wildcards.trial, wildcards.seed),
            data_root=lambda wildcards: PLAN.data_root(
                PLAN.trial_settings(wildcards.trial, wildcards.seed)
            ),
            checkpoint=lambda wildcards: PLAN.trial_checkpoint(wildcards.trial, wildcards.seed),
        script:
            "../../scripts/train.py"


for group in PLAN.trial_groups:

    rule:
        name:
            f"train_trial_ensemble_{group}"
        input:
            of_group(PLAN.trial_group_data_inputs, group),
        output:
            PLAN.trial_group_outputs(group, "{seed}"),
        log:
            f"logs/trials/ensemble/{group}/seed{{seed}}.log",
        benchmark:
            f"benchmarks/runs/trials/ensemble/{group}/seed{{seed}}.tsv"
        threads: 1  # run_ensemble keeps torch on one thread
        resources:
            **PLAN.gpu_resources(),
            mem_mb=of_group(PLAN.trial_group_resources, group, "mem_mb"),
            runtime=of_group(PLAN.trial_group_resources, group, "runtime"),
        params:
            members=of_group(PLAN.trial_group_params, group),
            folders=of_group(PLAN.trial_group_folders, group),
            data_root=of_group(PLAN.trial_group_data_root, group),
            checkpoints=of_group(PLAN.trial_group_checkpoints, group),
        script:
            "../../scripts/train_ensemble.py"
