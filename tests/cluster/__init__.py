"""Test helpers that start real cluster software (a throw-away single-node Slurm)."""
