"""Snakemake script: obtain and verify one raw data set (all logic lives in eqp.sources)."""

import logging

from eqp.sources import ensure_dataset

smk = snakemake  # noqa: F821  (injected by Snakemake's script directive)

logging.basicConfig(
    filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
)
ensure_dataset(smk.params.name, smk.params.root, user_dir=smk.params.user_dir or None)
