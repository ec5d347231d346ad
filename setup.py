"""The one compiled piece: the fused settling kernels used by the fast engine on CPUs.

It is optional: where no C compiler is available the install still succeeds and the engine
falls back to its TorchScript loop (same arithmetic, several ATen calls per step). Where the
compiler supports OpenMP the kernels are built with it and can use several cores; without it
they build single-threaded.
"""

import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]
PROBE = "#include <omp.h>\nint probe(void) { return omp_get_max_threads(); }\n"


class BuildExt(build_ext):
    """Adds OpenMP to the kernel's flags when a probe compiles and links with them."""

    def build_extension(self, ext: Extension) -> None:
        if self._links_with(OPENMP):
            ext.extra_compile_args = [*ext.extra_compile_args, *OPENMP]
            ext.extra_link_args = [*ext.extra_link_args, *OPENMP]
        super().build_extension(ext)

    def _links_with(self, flags: list[str]) -> bool:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "probe.c"
            source.write_text(PROBE)
            try:
                objects = self.compiler.compile(
                    [str(source)], output_dir=folder, extra_postargs=flags
                )
                self.compiler.link_shared_object(
                    objects, str(Path(folder) / "probe.so"), extra_postargs=flags
                )
            except Exception:  # noqa: BLE001 - any failure means: build without OpenMP
                return False
        return True


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "eqp._settle",
            sources=["eqp/engines/backends/csrc/settle.c"],
            depends=[
                "eqp/engines/backends/csrc/settle_arith.h",
                "eqp/engines/backends/csrc/update.h",
            ],
            # the source spells out every fused multiply-add; the compiler adds none
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ],
)
