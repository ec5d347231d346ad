"""The one compiled piece: the fused Euler kernel used by the fast engine on CPUs.

It is optional: where no C compiler is available the install still succeeds and the engine
falls back to its TorchScript loop (same arithmetic, several ATen calls per step).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "eqp._settle",
            sources=["eqp/csrc/settle.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
