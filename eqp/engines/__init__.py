"""How a state settles: the minimiser protocol, the dense reference, the fast engine, converged
settling (``settle: sor``) and the backends that run them (C kernel, TorchScript, CUDA graphs,
Triton).
"""
