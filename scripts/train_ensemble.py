"""Snakemake script of train_sweep_ensemble and train_trial_ensemble_<group>: the members of
one ensemble trained in lockstep (eqp.pipeline.train_ensemble)."""

from eqp.pipeline import train_ensemble

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

train_ensemble(
    smk.params.members,
    smk.params.folders,
    data_root=smk.params.data_root,
    checkpoints=smk.params.checkpoints,
    log_path=smk.log[0],
)
