"""Trial settings and their validation, the allowed values, and which trials stack.

Torch-free: the workflow imports it to build its DAG.
"""
