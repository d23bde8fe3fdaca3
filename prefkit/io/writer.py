"""Streaming safetensors writer: shapes and dtypes are known from the plan, so every shard's
header is written first and tensor bytes are appended as the merge produces them. No shard is
ever held in memory."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefkit.io.dtypes import ITEMSIZE, SAFETENSORS_DTYPES

if TYPE_CHECKING:
    import numpy as np
    import torch

TORCH_TO_SAFETENSORS = {torch_name: st for st, torch_name in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = ITEMSIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n


def plan_shards(tensors: list[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a bigger tensor alone)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardWriter:
    """Writes the planned shards into `folder`; tensors must arrive in plan order.

    An OSError (disk full, file size limit) names the shard it was writing; the caller removes
    the folder.
    """

    def __init__(self, folder: Path, shards: list[list[OutTensor]], metadata: dict[str, str],
                 submit=None):
        self.folder = folder
        self.shards = shards
        self.names = shard_names(len(shards))
        self.metadata = metadata
        self._order = [(i, t) for i, shard in enumerate(shards) for t in shard]
        self._next = 0
        self._rows = 0  # rows of the current tensor written so far (slabs)
        self._file = None
        self._shard = -1
        # `submit(fn, *args) -> Future` runs the file operations on a background thread, in
        # order, so writing overlaps the next merge; the caller keeps written buffers untouched
        # until then. An error comes back at the next write, or at close().
        self._submit = submit
        self._jobs: list = []

    def _run(self, index: int, fn, *args) -> None:
        """Run a file operation on shard `index`, now or in the background."""
        if self._submit is None:
            _on_shard(self.folder / self.names[index], fn, *args)
            return
        while self._jobs and self._jobs[0].done():
            self._jobs.pop(0).result()  # raises the error of a failed write
        self._jobs.append(self._submit(_on_shard, self.folder / self.names[index], fn, *args))

    def _wait(self, errors: bool = True) -> None:
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            if errors:
                job.result()
            else:
                job.exception()

    def _open(self, index: int) -> None:
        self._shard = index
        self._run(index, self._open_shard, index)

    def _open_shard(self, index: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict[str, object] = {"__metadata__": dict(self.metadata)}
        offset = 0
        for t in self.shards[index]:
            header[t.name] = {"dtype": TORCH_TO_SAFETENSORS[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
        self._file = open(self.folder / self.names[index], "wb")
        self._file.write(len(blob).to_bytes(8, "little"))
        self._file.write(blob)

    def write(self, name: str, tensor: torch.Tensor | np.ndarray, dtype: str | None = None) -> None:
        """Append `tensor`: the whole planned tensor, or its next slab of rows (a large tensor
        arrives as consecutive slabs of its first dimension, in order).

        A numpy array comes with `dtype`, the name of what its bytes hold (bfloat16 is held as
        uint16 bits, see `prefkit.io.arrays`); a torch tensor's own dtype is used.
        """
        shard, expected = self._order[self._next]
        if name != expected.name:
            raise ValueError(f"writer expected tensor {expected.name!r}, got {name!r}")
        numpy = dtype is not None
        if numpy and tensor.itemsize != ITEMSIZE[dtype]:
            raise ValueError(f"tensor {name!r}: {tensor.dtype} entries cannot hold {dtype}")
        dtype, shape = dtype or str(tensor.dtype)[6:], tuple(tensor.shape)
        whole = shape == expected.shape and self._rows == 0
        if dtype != expected.dtype or not (whole or self._fits_rows(shape, expected.shape)):
            raise ValueError(
                f"tensor {name!r}: planned {expected.dtype}{list(expected.shape)}, "
                f"got {dtype}{list(shape)}" + (f" after {self._rows} rows" if self._rows else "")
            )
        if shard != self._shard:
            self._open(shard)
        if numpy:
            data = memoryview(tensor.reshape(-1).view("uint8"))  # a copy if not contiguous
        else:
            import torch  # a tensor came: torch is loaded already

            data = memoryview(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
        if len(data):
            self._run(shard, self._write_bytes, data)
        self._rows = 0 if whole else self._rows + shape[0]
        if whole or self._rows == expected.shape[0]:
            self._next, self._rows = self._next + 1, 0

    def _fits_rows(self, shape: tuple[int, ...], planned: tuple[int, ...]) -> bool:
        return (len(shape) == len(planned) > 0 and shape[1:] == planned[1:]
                and self._rows + shape[0] <= planned[0])

    def _write_bytes(self, data: memoryview) -> None:
        self._file.write(data)

    def _close_file(self) -> None:
        self._file.close()  # flushes: a full disk may show only now
        self._file = None

    def close(self) -> None:
        """Finish the last shard and write `model.safetensors.index.json` for sharded outputs."""
        if self._next != len(self._order):
            missing = self._order[self._next][1].name
            self.abort()
            raise ValueError(f"writer closed before tensor {missing!r} was written")
        if self._shard >= 0:
            self._run(self._shard, self._close_file)
        self._wait()
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for s in self.shards for t in s)},
                "weight_map": {t.name: self.names[i] for i, t in self._order},
            }
            (self.folder / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n"
            )

    def abort(self) -> None:
        self._wait(errors=False)  # the write that failed already says why
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def _on_shard(path: Path, fn, *args) -> None:
    with _naming(path):
        fn(*args)


@contextmanager
def _naming(path: Path):
    """Attach the file name to an OSError raised by a write (write() errors carry none)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


class MemorySink:
    """Takes `ShardWriter.write`'s calls and keeps the tensors instead (name → torch tensor):
    a merge that is scored, not kept, gets exactly the values a shard would hold. Written
    buffers are copied (the executor reuses them)."""

    def __init__(self, tensors: list[OutTensor]):
        self._planned = {t.name: t for t in tensors}
        self._rows: dict[str, int] = {}
        self.tensors: dict = {}

    def write(self, name: str, tensor, dtype: str | None = None) -> None:
        import torch

        if dtype is not None:  # a numpy array holding `dtype` (bfloat16 as uint16 bits)
            value = torch.from_numpy(tensor.copy())
            if value.dtype != getattr(torch, dtype):
                value = value.view(getattr(torch, dtype))
        else:
            value = tensor.detach().cpu().clone()
        planned = self._planned[name]
        if tuple(value.shape) == planned.shape and name not in self._rows:
            self.tensors[name] = value
            return
        # a slab of rows of a large tensor: into its place in the whole
        whole = self.tensors.setdefault(name, torch.empty(planned.shape, dtype=value.dtype))
        start = self._rows.get(name, 0)
        whole[start:start + value.shape[0]] = value
        self._rows[name] = start + value.shape[0]

    def close(self) -> None:
        missing = [n for n in self._planned if n not in self.tensors]
        if missing:
            raise ValueError(f"merge ended before tensor {missing[0]!r} was given")

    def abort(self) -> None:
        self.tensors.clear()
