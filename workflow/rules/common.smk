# The config resolved into jobs (eqp.pipeline.Plan) and helpers shared by the rule files.
from pathlib import Path

from eqp.settings import SettingsError

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


# What the last jobs make from the run folders; benchmarks/jobs.tsv is built after these.
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
