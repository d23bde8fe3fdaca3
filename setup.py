"""What pyproject.toml cannot yet say stably: prefkit's optional C extension, the fused TIES loops
of prefkit/_kernels.c (prefkit/kernels.py says why C). Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "prefkit._kernels",
    ["prefkit/_kernels.c"],
    # -ffp-contract=off: no a*b+c fused into one rounding, so the loops give torch's eager bits
    extra_compile_args=["-O3", "-ffp-contract=off"],
    optional=True,  # without a C compiler the install succeeds, and TIES takes the eager path
)])
