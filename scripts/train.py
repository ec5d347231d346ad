"""Snakemake script of train_trial and train_sweep_point: one training job (eqp.pipeline.train)."""

from pathlib import Path

from eqp.pipeline import train

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

train(
    smk.params.job,
    Path(smk.output.summary).parent,
    data_root=smk.params.data_root,
    checkpoint=smk.params.checkpoint,
    log_path=smk.log[0],
    threads=smk.threads,
    # read from the config, not a param: whether the state is kept changes no result
    keep_state=smk.config.get("keep_state", "auto"),
)
