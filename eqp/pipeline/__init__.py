"""The Snakemake side: a pipeline config resolved into jobs, paths and resources, and the
entry points its scripts call. Torch-free at import: the workflow imports it to build its DAG.

* :mod:`.plan` — the :class:`Plan`: trials, sweep points, ensembles, folders, inputs, outputs;
* :mod:`.resources` — memory and wall time of a training job (the Slurm limits);
* :mod:`.jobs` — train, train an ensemble, draw a figure, write Table 1, with logs;
* :mod:`.config_doc` — ``--config`` values, schema errors in one line, config/README.md tables;
* :mod:`.snapshot` — a run's folders, figures and Table 1 so far.

The names the Snakefile, scripts and tests use are importable from here.
"""

from eqp.config.settings import DOWNLOADED, PipelineError
from eqp.pipeline.config_doc import (
    DOC_BEGIN,
    DOC_END,
    config_doc,
    generated_section,
    load_schema,
    schema_error_message,
    typed_cli_values,
    with_generated_section,
)
from eqp.pipeline.jobs import (
    DiskFullError,
    disk_full_error,
    draw_figure,
    logged,
    run_training_job,
    train,
    train_ensemble,
    write_table,
)
from eqp.pipeline.plan import (
    FIGURE_MEM_MB,
    FIGURE_TRIALS,
    FIGURES,
    TRIAL_FILES,
    Job,
    Plan,
    dataset_of_folder,
    sweep_values,
)
from eqp.pipeline.resources import (
    BASE_MEM_MB,
    ENSEMBLE_CPU_SLOWDOWN,
    ENSEMBLE_MEMBER_OVERHEAD_S,
    GPU_HOST_MEM_MB,
    GPU_SECONDS_PER_ENTRY_EXAMPLE,
    GPU_SECONDS_PER_STEP,
    GPU_SECONDS_PER_UPDATE,
    GPU_SECONDS_PER_UPDATE_ENTRY,
    JOB_OVERHEAD_S,
    MIN_RUNTIME_MIN,
    PARALLEL_EFFICIENCY,
    RUNTIME_MARGIN,
    SECONDS_PER_EDGE_EXAMPLE,
    SECONDS_PER_STEP,
    SECONDS_PER_UPDATE_ENTRY,
    SOR_PASSES,
    connections,
    estimate_ensemble_mem_mb,
    estimate_ensemble_resources,
    estimate_ensemble_seconds,
    estimate_mem_mb,
    estimate_resources,
    estimate_seconds,
    examples,
)

__all__ = [
    "Job",
    "run_training_job",
    "DOWNLOADED",
    "PipelineError",
    "TRIAL_FILES",
    "FIGURES",
    "FIGURE_MEM_MB",
    "FIGURE_TRIALS",
    "dataset_of_folder",
    "sweep_values",
    "Plan",
    "SECONDS_PER_STEP",
    "SECONDS_PER_EDGE_EXAMPLE",
    "SECONDS_PER_UPDATE_ENTRY",
    "PARALLEL_EFFICIENCY",
    "SOR_PASSES",
    "JOB_OVERHEAD_S",
    "RUNTIME_MARGIN",
    "ENSEMBLE_CPU_SLOWDOWN",
    "ENSEMBLE_MEMBER_OVERHEAD_S",
    "GPU_SECONDS_PER_STEP",
    "GPU_SECONDS_PER_ENTRY_EXAMPLE",
    "GPU_SECONDS_PER_UPDATE",
    "GPU_SECONDS_PER_UPDATE_ENTRY",
    "GPU_HOST_MEM_MB",
    "MIN_RUNTIME_MIN",
    "BASE_MEM_MB",
    "connections",
    "examples",
    "estimate_seconds",
    "estimate_ensemble_seconds",
    "estimate_mem_mb",
    "estimate_ensemble_mem_mb",
    "estimate_resources",
    "estimate_ensemble_resources",
    "DiskFullError",
    "disk_full_error",
    "logged",
    "train",
    "train_ensemble",
    "draw_figure",
    "write_table",
    "typed_cli_values",
    "schema_error_message",
    "DOC_BEGIN",
    "DOC_END",
    "load_schema",
    "config_doc",
    "generated_section",
    "with_generated_section",
]
