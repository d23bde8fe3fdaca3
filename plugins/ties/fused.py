"""Whether TIES's fused C loops (`kernels`, over plugins/ties/_kernels.c) take a merge's work:
the extension is built, `PREFKIT_KERNELS` is not `torch`, and the tensors are ones they take.
Wherever they do not, the eager path (torch's operations, or numpy's) gives the same bits.
"""

from __future__ import annotations

import os

from prefkit.ops import is_numpy


def kernels_enabled() -> bool:
    """The C loops can run: built, and not turned off by `PREFKIT_KERNELS=torch`."""
    return os.environ.get("PREFKIT_KERNELS") != "torch" and _wrappers() is not None


def kernels_for(*tensors):
    """The `kernels` module (fused C loops, the same bits as the eager torch ops) when every
    tensor is contiguous float32 on the CPU (torch's or numpy's, all of one library), the
    extension is built and `PREFKIT_KERNELS` is not `torch`; else None (use the eager path)."""
    if os.environ.get("PREFKIT_KERNELS") == "torch":
        return None
    if all(is_numpy(t) for t in tensors):
        import numpy as np

        if not all(t.dtype == np.float32 and t.flags.c_contiguous for t in tensors):
            return None
    else:
        import torch

        if not all(not is_numpy(t) and t.dtype == torch.float32 and t.device.type == "cpu"
                   and t.is_contiguous() for t in tensors):
            return None
    return _wrappers()


def _wrappers():
    """The `kernels` module, or None when its import fails (the extension is not built)."""
    try:
        from . import kernels as module
    except ImportError:  # not built (no C compiler at install): the eager path merges alike
        return None
    return module
