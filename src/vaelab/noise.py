"""Where random numbers come from.

* :func:`seeded` runs a block on its own seeded stream and restores the caller's.
* :func:`standard_normal` and :func:`uniform16` are the noise of the reparameterization
  (``distributions.ShardableNormal``) and of dynamic binarization (``data.Split``). Inside
  a :func:`batch_shard` block they draw the numbers of a whole global batch of examples
  and return this process's rows of it, so a batch cut over several processes (torchrun)
  uses the numbers that one process would (see :mod:`vaelab.devices`). The block is
  entered by ``Split.batches`` around each shard it yields; outside any block, a draw is a
  plain ``torch.randn`` / ``torch.randint``.
* Inside an :class:`ExampleStreams` block, :func:`standard_normal`'s draws of samples of
  examples, (samples, B, L), take every example's numbers from a stream of its own,
  keyed by the seed, the example's index in the data and the samples' place: the
  importance-sampled log-likelihood then draws the same codes for an image whatever the
  batch, the chunk of samples or the number of processes it is computed in.

The shard is a module-level value, set and reset only by :func:`batch_shard` (not a
context variable: ``torch.compile`` cannot trace ``ContextVar.get``, and the graph break
it made in every reparameterized draw cost the compiled step more than it gained).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

Tensor = torch.Tensor

_SHARD: list[tuple[int, int, int] | None] = [None]  # the shard of the batch being drawn
_STREAMS: list["ExampleStreams | None"] = [None]  # the streams being drawn from


@contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with its own seeded RNG stream; the caller's RNG state is restored after."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextmanager
def batch_shard(start: int, stop: int, total: int) -> Iterator[None]:
    """Within the block, :func:`standard_normal` and :func:`uniform16` draw numbers for a
    global batch of ``total`` examples and return rows ``start:stop`` of it."""
    before, _SHARD[0] = _SHARD[0], (start, stop, total)
    try:
        yield
    finally:
        _SHARD[0] = before


class ExampleStreams:
    """Codes for a batch of examples ``first``, ``first + 1``, ... of a data set, each
    example's from a stream of its own: samples in blocks of ``block``, each block from
    a generator seeded by (seed, example, block, the draw's ordinal within a chunk: a
    hierarchy draws once per layer). ``with streams.at(sample):`` makes
    :func:`standard_normal`'s draws of shape (samples, B, L) inside it take samples
    ``sample``, ``sample + 1``, ...; the blocks a chunk of samples started are kept for
    the next chunk, so every number is drawn once."""

    def __init__(self, seed: int, first: int, block: int):
        self.seed, self.first, self.block = seed, first, block
        self._start, self._ordinal = 0, 0
        self._blocks: dict[tuple, Tensor] = {}  # (ordinal, block, dtype) -> (B, block, L)

    @contextmanager
    def at(self, sample: int) -> Iterator[None]:
        before, _STREAMS[0] = _STREAMS[0], self
        self._start, self._ordinal = sample, 0
        try:
            yield
        finally:
            _STREAMS[0] = before

    def _make(self, ordinal: int, block: int, b: int, width: int, dtype, device) -> Tensor:
        """A block of every example's stream, (block, B, L), filled example by example
        (one copy each: torch.stack, or one strided copy of them all, is 8-30x slower).
        On a CUDA device the streams are the device's own generator's (Philox), drawn
        there: drawn on the CPU and copied, they held a k = 5000 estimate on an H200 to 4 %
        of its decoder's arithmetic rate (docs/benchmarks.md). An image's codes then depend
        on the kind of device (CPU or CUDA), still not on its batch, chunk or process."""
        if torch.device(device).type == "cuda":  # one kernel per example: its rows in
            g = torch.Generator(device=device)  # place, then one transposing copy
            rows = torch.empty(b, self.block, width, dtype=dtype, device=device)
            for i in range(b):
                torch.randn(self.block, width, dtype=dtype, out=rows[i], generator=g.manual_seed(
                    _key(self.seed, self.first + i, block, ordinal)))
            return rows.transpose(0, 1).contiguous()
        g, row = torch.Generator(), torch.empty(self.block, width, dtype=dtype)
        out = torch.empty(self.block, b, width, dtype=dtype)
        for i in range(b):
            torch.randn(self.block, width, dtype=dtype, out=row,
                        generator=g.manual_seed(_key(self.seed, self.first + i, block, ordinal)))
            out[:, i].copy_(row)
        return out

    def draw(self, shape: torch.Size, dtype: torch.dtype, device) -> Tensor:
        if len(shape) != 3:
            raise RuntimeError(f"a draw in example streams has shape (samples, examples, L), "
                               f"got {tuple(shape)}")
        k, b, width = shape
        ordinal, start, n = self._ordinal, self._start, self.block
        self._ordinal += 1
        lo, hi = start // n, (start + k - 1) // n
        for key in [key for key in self._blocks if key[0] == ordinal and key[1] < lo]:
            del self._blocks[key]  # blocks behind this chunk are done with
        pieces = []
        for block in range(lo, hi + 1):
            key = (ordinal, block, dtype)
            if key not in self._blocks:
                self._blocks[key] = self._make(ordinal, block, b, width, dtype, device)
            a, z = max(start, block * n), min(start + k, (block + 1) * n)  # samples [a, z)
            pieces.append(self._blocks[key][a - block * n:z - block * n])
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)).to(device)


def _key(*parts: int) -> int:
    """A 63-bit seed from integers (a fixed mix, the same in every process and version)."""
    h = 0x9E3779B97F4A7C15
    for v in parts:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _draw(fill, shape: torch.Size, dim: int, **kw) -> Tensor:
    if _STREAMS[0] is not None and fill is torch.randn and kw.get("generator") is None:
        return _STREAMS[0].draw(shape, kw["dtype"], kw["device"])
    shard = _SHARD[0]
    if shard is None:
        return fill(shape, **kw)
    start, stop, total = shard
    dim = dim % len(shape)
    if shape[dim] != stop - start:
        raise RuntimeError(f"a sharded draw of shape {tuple(shape)} has {shape[dim]} rows in "
                           f"dimension {dim}, but the shard holds {stop - start}")
    full = list(shape)
    full[dim] = total
    return fill(full, **kw).narrow(dim, start, stop - start)


def standard_normal(shape: torch.Size, dim: int, dtype: torch.dtype, device: torch.device
                    ) -> Tensor:
    """N(0, 1) noise of ``shape``, whose dimension ``dim`` runs over the examples."""
    return _draw(torch.randn, torch.Size(shape), dim, dtype=dtype, device=device)


def _bits16(shape, device: torch.device, generator: torch.Generator | None) -> Tensor:
    shape = torch.Size(shape)
    if torch.device(device).type not in ("cpu", "cuda"):  # (no 64-bit draws assumed: MPS)
        return torch.randint(-2 ** 15, 2 ** 15, shape, dtype=torch.int32, device=device,
                             generator=generator)
    n = shape.numel()
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64,
                          device=device, generator=generator)
    return words.view(torch.int16)[:n].view(shape)


def uniform16(shape: torch.Size, dim: int, device: torch.device,
              generator: torch.Generator | None = None) -> Tensor:
    """Integers of ``shape`` (int16) whose values + 32768 are uniform on {0, ..., 65535}, from
    ``generator``; dimension ``dim`` runs over the examples. Four to a 64-bit draw: on a
    CPU about 3x faster than ``torch.rand``'s one 32-bit draw per float."""
    return _draw(_bits16, torch.Size(shape), dim, device=device, generator=generator)
