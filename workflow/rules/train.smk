# Stages 2 and 3: training. The named trials write results/trials/{trial}/seed{seed}/, the
# bypass-p sweep of Figure 4 (config["sweep"]["base"] with bypass_p = p) writes
# results/sweep/p{p}/seed{seed}/. Every job is one eqp.pipeline.Job, resolved once by the plan
# and only read here: its members' settings (a param, so a changed setting reruns exactly its
# job), folders, checkpoints (outside the declared outputs, so a killed job resumes after its
# last epoch), data and resources.
#
# One definition for the jobs that train one folder (train_trial: a named trial and seed;
# train_sweep_point: a point and seed) and one for the jobs that train an ensemble in
# lockstep (train_sweep_ensemble: every point of a seed, with sweep.ensemble on;
# train_trial_ensemble_<group>: the stackable named trials of a group and seed, with
# trial_ensembles on; eqp.config.stacking). Each file has exactly one producer: a trial in a
# group is not train_trial's, and the sweep is either per point or per seed.

SINGLE_JOBS = []
if PLAN.solo_trials:
    SINGLE_JOBS.append(("train_trial", "trials/{trial}", {"trial": "|".join(PLAN.solo_trials)}))
if not PLAN.sweep_ensemble:
    SINGLE_JOBS.append(("train_sweep_point", "sweep/p{p}", {}))

ENSEMBLE_JOBS = [
    (f"train_trial_ensemble_{group}", f"trials/ensemble/{group}", group)
    for group in PLAN.trial_groups
]
if PLAN.sweep_ensemble:
    ENSEMBLE_JOBS.append(("train_sweep_ensemble", "sweep/ensemble", None))


for name, place, constraints in SINGLE_JOBS:

    rule:
        name:
            name
        input:
            lambda wildcards: single_job(wildcards).data_inputs,
        output:
            **folder_outputs(f"{RESULTS}/{place}/seed{{seed}}"),
        log:
            f"logs/{place}/seed{{seed}}.log",
        benchmark:
            f"benchmarks/runs/{place}/seed{{seed}}.tsv"
        wildcard_constraints:
            **constraints,
        threads: PLAN.threads_per_job
        resources:
            **PLAN.gpu_resources(),
            mem_mb=lambda wildcards: single_job(wildcards).resources["mem_mb"],
            runtime=lambda wildcards: single_job(wildcards).resources["runtime"],
        params:
            members=lambda wildcards: single_job(wildcards).params,
            folders=lambda wildcards: single_job(wildcards).folders,
            checkpoints=lambda wildcards: single_job(wildcards).checkpoints,
            data_root=lambda wildcards: single_job(wildcards).data_root,
            stacked=False,
        script:
            "../../scripts/train.py"


for name, place, group in ENSEMBLE_JOBS:

    rule:
        name:
            name
        input:
            ensemble_job(group, "data_inputs"),
        output:
            PLAN.ensemble_outputs(group),
        log:
            f"logs/{place}/seed{{seed}}.log",
        benchmark:
            f"benchmarks/runs/{place}/seed{{seed}}.tsv"
        threads: 1  # run_ensemble keeps torch on one thread
        resources:
            **PLAN.gpu_resources(),
            mem_mb=ensemble_job(group, "resources", "mem_mb"),
            runtime=ensemble_job(group, "resources", "runtime"),
        params:
            members=ensemble_job(group, "params"),
            folders=ensemble_job(group, "folders"),
            checkpoints=ensemble_job(group, "checkpoints"),
            data_root=ensemble_job(group, "data_root"),
            stacked=True,
        script:
            "../../scripts/train.py"
