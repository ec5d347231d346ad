"""Measurements that are never part of a run: benchmarks (CPU and GPU) and the
converged-settling equivalence study.
"""
