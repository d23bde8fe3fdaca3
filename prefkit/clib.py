"""prefkit's optional C extension (`prefkit/_kernels.c`), loaded with ctypes, without torch.

`pip install` builds it when a C compiler is there (setup.py, `optional`); `library()` is None
when it was not built or cannot be loaded, and callers then take their eager path.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

_P, _N = ctypes.c_void_p, ctypes.c_int64
SIGNATURES = {  # name: (argument types, result type)
    "prefkit_high_counts": ([_P, _P, _N, ctypes.c_uint32, ctypes.c_uint32, _P, _P, _N], _N),
    "prefkit_low_counts": ([_P, _N, ctypes.c_uint32, _P], None),
    "prefkit_ties_merge": ([_P, ctypes.c_int, _N, _P, _P, _P, ctypes.c_int, ctypes.c_int,
                            ctypes.c_float, _P, _P], ctypes.c_int),
    "prefkit_fma_f32": ([_P, _P, ctypes.c_float, _N], None),
    "prefkit_fma_f64": ([_P, _P, ctypes.c_double, _N], None),
}


@functools.cache
def library() -> ctypes.CDLL | None:
    """The extension with every function's signature set, or None (`load` says why)."""
    try:
        return load()
    except ImportError:
        return None


def load() -> ctypes.CDLL:
    """The extension; ImportError says why it cannot be used."""
    spec = importlib.util.find_spec("prefkit._kernels")
    if spec is None or spec.origin is None:
        raise ImportError("prefkit._kernels is not built (pip install needs a C compiler)")
    try:
        lib = ctypes.CDLL(spec.origin)
        for name, (arguments, result) in SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = arguments, result
    except (OSError, AttributeError) as error:  # a build this module does not know how to call
        raise ImportError(f"prefkit._kernels cannot be loaded: {error}") from error
    return lib
