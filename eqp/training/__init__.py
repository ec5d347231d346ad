"""Training a trial: epochs, persistent particles, beta's sign, updates, checkpoints, and
ensembles of trials trained in lockstep.

trainer (a trial's epochs, made of its parts), update (its weight update), checkpoint (the
checkpoint format), scoring (scores and errors), run (trial folders from a trial alone or a
group), ensemble (stacked trials and their batched update).
"""
