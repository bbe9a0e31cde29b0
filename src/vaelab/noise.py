"""Where random numbers come from.

* :func:`seeded` runs a block on its own seeded stream and restores the caller's.
* :func:`standard_normal` and :func:`uniform` are the noise of the reparameterization
  (``distributions.ShardableNormal``) and of dynamic binarization (``data.Split``). Inside
  a :func:`batch_shard` block they draw the numbers of a whole global batch of examples
  and return this process's rows of it, so a batch cut over several processes (torchrun)
  uses the numbers that one process would (see :mod:`vaelab.devices`). The block is
  entered by ``Split.batches`` around each shard it yields; outside any block, a draw is a
  plain ``torch.randn`` / ``torch.rand``.

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
    """Within the block, :func:`standard_normal` and :func:`uniform` draw numbers for a
    global batch of ``total`` examples and return rows ``start:stop`` of it."""
    before, _SHARD[0] = _SHARD[0], (start, stop, total)
    try:
        yield
    finally:
        _SHARD[0] = before


def _draw(fill, shape: torch.Size, dim: int, **kw) -> Tensor:
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


def uniform(shape: torch.Size, dim: int, device: torch.device,
            generator: torch.Generator | None = None) -> Tensor:
    """U(0, 1) numbers of ``shape`` from ``generator``, whose dimension ``dim`` runs over
    the examples."""
    return _draw(torch.rand, torch.Size(shape), dim, device=device, generator=generator)
