"""What pyproject.toml cannot yet say stably: prefkit's optional C extensions, loaded with ctypes
(prefkit/engine/clib.py): the fused multiply-add of `prefkit.ops` (prefkit/engine/_fma.c) and
the fused loops of the TIES plugin (plugins/ties/_kernels.c; plugins/ties/kernels.py says why C).
Everything else is in pyproject.toml."""

from setuptools import Extension, setup


def optional_extension(name: str, source: str) -> Extension:
    return Extension(
        name,
        [source],
        # -ffp-contract=off: no a*b+c fused into one rounding, so the loops give torch's eager bits
        extra_compile_args=["-O3", "-ffp-contract=off"],
        optional=True,  # without a C compiler the install succeeds, and the eager paths run
    )


setup(ext_modules=[
    optional_extension("prefkit.engine._fma", "prefkit/engine/_fma.c"),
    optional_extension("prefkit.plugins.ties._kernels", "plugins/ties/_kernels.c"),
])
