"""prefkit's optional C extensions, loaded with ctypes, without torch: the generic loader.

An extension is a C file that setup.py builds (`optional`) as a Python module only so that
setuptools builds and names it; its functions are called through ctypes, which releases the GIL
while they run. `pip install` builds it when a C compiler is there; when it was not built or
cannot be loaded, `load_library` raises ImportError (saying why) and `library` answers None, and
callers take their eager path. Users: `prefkit.ops` (the fused multiply-add of
prefkit/engine/_fma.c) and the TIES plugin (plugins/ties/_kernels.c), both through `prefkit.ops`.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Mapping
from typing import Any

# Argument types and result type of each function an extension exports, by name.
Signatures = Mapping[str, tuple[list[Any], Any]]

_loaded: dict[str, ctypes.CDLL | None] = {}  # module name -> its library (None: not usable)


def library(module: str, signatures: Signatures) -> ctypes.CDLL | None:
    """The extension `module` (e.g. "prefkit.engine._fma") with every function's signature set,
    loaded once; None when it cannot be used (`load_library` says why)."""
    if module not in _loaded:  # (two threads may both load it: the same library, harmless)
        try:
            _loaded[module] = load_library(module, signatures)
        except ImportError:
            _loaded[module] = None
    return _loaded[module]


def load_library(module: str, signatures: Signatures) -> ctypes.CDLL:
    """The extension `module` with every function's signature set; ImportError says why it
    cannot be used."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"{module} is not built (pip install needs a C compiler)")
    try:
        lib = ctypes.CDLL(spec.origin)
        for name, (arguments, result) in signatures.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = arguments, result
    except (OSError, AttributeError) as error:  # a build this module does not know how to call
        raise ImportError(f"{module} cannot be loaded: {error}") from error
    return lib
