"""A trial folder written atomically and read back, the published numbers, and what is made
from folders only: Figures 2-5, Table 1, the runs index and the progress of unfinished runs.

It imports nothing of torch or training: training writes its folder through ``records``.
"""
