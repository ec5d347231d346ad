"""Snakemake script of fetch_dataset: obtain and verify one raw data set (eqp.data.sources).

config["dataset_source_dir"] is read here rather than passed as a param on purpose: the files
are md5-verified whatever their route, so pointing the pipeline at a local copy must not make
Snakemake re-fetch and then retrain everything downstream.
"""

from eqp.data.sources import ensure_dataset
from eqp.pipeline import logged

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

with logged(smk.log[0], writes_to=smk.output):
    # repair: files that no longer match their md5 are deleted and fetched again
    ensure_dataset(
        smk.params.name,
        smk.params.root,
        user_dir=smk.config.get("dataset_source_dir") or None,
        repair=True,
    )
