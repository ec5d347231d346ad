"""What runs an engine's steps: the fused C kernel (``csrc/``), TorchScript loops, CUDA graph
replays and a Triton step kernel.
"""
