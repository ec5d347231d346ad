"""Training a trial: epochs, persistent particles, beta's sign, updates, checkpoints, and
ensembles of trials trained in lockstep.
"""
