# The config resolved into jobs (eqp.pipeline.Plan) and helpers shared by the rule files.
from pathlib import Path

from eqp.config.settings import SettingsError

# trials_file and other relative paths in a config are relative to the repository root.
REPO_ROOT = Path(workflow.basedir).parent

try:
    PLAN = pipeline.Plan.from_config(config, base_dir=REPO_ROOT)
except SettingsError as err:
    raise WorkflowError(f"invalid config: {err}") from None

RESULTS = PLAN.results_dir
# Names of the files of a trial folder, by the key a rule's output uses for each.
FOLDER_KEYS = {Path(name).stem: name for name in pipeline.TRIAL_FILES}


def folder_outputs(folder):
    """The six files of a trial folder as named outputs (summary.json is written last)."""
    return {key: f"{folder}/{name}" for key, name in FOLDER_KEYS.items()}


def single_job(wildcards):
    """The job (eqp.pipeline.Job) of train_trial or train_sweep_point, by its wildcards."""
    if hasattr(wildcards, "trial"):
        return PLAN.trial_job(wildcards.trial, wildcards.seed)
    return PLAN.sweep_job(wildcards.p, wildcards.seed)


def ensemble_job(group, field, key=None):
    """A rule function reading one field (its ``key`` entry, if given) of the ensemble job of
    ``group`` (None: the sweep) for the seed wildcard; the rules are defined in a loop."""

    def function(wildcards):
        if group is None:
            job = PLAN.sweep_ensemble_job(wildcards.seed)
        else:
            job = PLAN.trial_group_job(group, wildcards.seed)
        value = getattr(job, field)
        return value if key is None else value[key]

    return function


# What the last jobs make from the run folders; results/jobs.tsv is built after these.
SUMMARIES = [
    *expand("figures/{figure}.{ext}", figure=pipeline.FIGURES, ext=("pdf", "png")),
    *expand("tables/table1.{ext}", ext=("csv", "md", "tex")),
    f"{RESULTS}/runs.tsv",
]


wildcard_constraints:
    trial="|".join(PLAN.trial_names),
    seed=r"\d+",
    p=r"\d+\.\d{6}",


def figure_labels(file_format):
    """Report labels of one figure file: 'Fig. 2' etc. and its format."""
    return lambda wildcards: {
        "figure": f"Fig. {wildcards.figure.removeprefix('fig')}",
        "format": file_format,
    }


def benchmark_files():
    """The benchmark file of every job of the default target, by rule (rules' own patterns).

    The sweep's jobs are train_sweep_ensemble's or train_sweep_point's, whichever rule the
    config defines; the named trials' are train_trial's and train_trial_ensemble_<group>'s. Called by the last rule (rules/runs.smk), once every other rule exists.
    """
    if PLAN.sweep_ensemble:
        sweep = {
            "train_sweep_ensemble": expand(rules.train_sweep_ensemble.benchmark, seed=PLAN.seeds)
        }
    else:
        sweep = {
            "train_sweep_point": expand(
                rules.train_sweep_point.benchmark, p=PLAN.sweep_labels, seed=PLAN.seeds
            )
        }
    trials = {}
    if PLAN.solo_trials:
        trials["train_trial"] = expand(
            rules.train_trial.benchmark, trial=PLAN.solo_trials, seed=PLAN.seeds
        )
    for group in PLAN.trial_groups:
        name = f"train_trial_ensemble_{group}"
        trials[name] = expand(getattr(rules, name).benchmark, seed=PLAN.seeds)
    files = {
        "fetch_dataset": expand(rules.fetch_dataset.benchmark, folder=PLAN.fetched_folders()),
        **trials,
        **sweep,
        "figure": expand(rules.figure.benchmark, figure=pipeline.FIGURES),
        "table1": [rules.table1.benchmark],
        "runs_index": [rules.runs_index.benchmark],
    }
    return {rule: [str(path) for path in paths] for rule, paths in files.items()}
