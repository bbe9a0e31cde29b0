"""The K particles of an image in bits-back with importance sampling, two ways.

* :class:`Independent` (BB-IS, Ruan et al. 2021): z_1 .. z_K drawn from Q(z|x) one by one,
  each popped from the stack; after j is chosen the others are pushed back under Q. The
  stack must hold K draws per image (K times ~ latent_bits + 2 bits a dimension), and the
  coder runs K times per dimension.
* :class:`Coupled` (their BB-CIS): one uniform u (24 bits a dimension) popped per image;
  particle k is Q's quantile at (u + o_k) mod 1 in every dimension, o_k fixed offsets, so
  each particle is a draw of Q and the K of them are one random shift of a fixed point
  set. After j is chosen, the decoder needs only u's place inside z_j's bin: pushed
  uniformly over the bin's mass (24 + log2 Q(z_j) bits). Same net cost, -log (1/K)
  sum_k w_k; the stack needs 24 bits a dimension whatever K, and the coder runs once per
  dimension.

Both work layer by layer for a hierarchy (a layer's Q depends on the particle's layers
above) and return the particles' codes z (K, B, T*L) and their bins.
"""
from __future__ import annotations

import numpy as np
import torch

from .latents import Grid, coder_models, gaussian

Tensor = torch.Tensor
ONE = 1 << 24  # the coupled quantiles' resolution
HALF = 1 << 12


class Independent:
    """BB-IS: every particle popped from Q, the unchosen pushed back."""

    def __init__(self, grid: Grid, post, shape: tuple[int, int, int, int]):
        self.grid, self.post, (self.K, self.B, self.T, self.dim) = grid, post, shape

    @staticmethod
    def bits(samples: int, latent_dim: int, latent_bits: int) -> float:
        """Bits an image's draws may take from the stack, at most (a posterior no wider
        than the prior): ``samples`` draws of ``latent_bits`` + 4 bits a dimension."""
        return samples * latent_dim * (latent_bits + 4)

    def _q(self, z: Tensor, t: int) -> tuple[Tensor, Tensor]:
        return gaussian(self.post(z.clone())[t], (self.K, self.B))

    def draw(self, coder, z: Tensor, bins: list[np.ndarray]) -> None:
        """Encoder: fill z (K, B, T*L) and bins (K, B, L) per layer, popped from Q."""
        for t in range(self.T):
            i = self.grid.draw(coder, *self._q(z, t))
            bins[t][:] = i.reshape(self.K, self.B, self.dim)
            z[..., t * self.dim:(t + 1) * self.dim] = self.grid.values(i, bins[t].shape, z.device)

    def keep(self, coder, z: Tensor, bins, j: np.ndarray, others: Tensor) -> None:
        """Encoder, after j: push what the decoder needs to recover the particles."""
        mask = others.cpu().numpy()
        for t in reversed(range(self.T)):
            loc, scale = self._q(z, t)
            self.grid.give_back(coder, bins[t][mask].reshape(-1), loc[others], scale[others])

    def recover(self, coder, z: Tensor, bins, j: np.ndarray, others: Tensor) -> None:
        """Decoder: z and bins hold particle j; fill in the others."""
        mask = others.cpu().numpy()
        for t in range(self.T):
            loc, scale = self._q(z, t)
            i = self.grid.draw(coder, loc[others], scale[others])
            bins[t][mask] = i.reshape(-1, self.dim)
            z[..., t * self.dim:(t + 1) * self.dim][others] = \
                self.grid.values(i, (-1, self.dim), z.device)

    def give_back(self, coder, z: Tensor, bins) -> None:
        """Decoder, after j: push every particle under Q, as the encoder popped them."""
        for t in reversed(range(self.T)):
            self.grid.give_back(coder, bins[t].reshape(-1), *self._q(z, t))


def kind(samples: int, coupled: bool) -> type[Independent]:
    """The particles a file uses: coupled (BB-CIS) or drawn one by one (BB-IS; and at
    K = 1, BB-ANS)."""
    return Coupled if coupled and samples > 1 else Independent


class Coupled(Independent):
    """BB-CIS: one uniform per image and dimension, shifted by fixed offsets per particle."""

    @staticmethod
    def bits(samples: int, latent_dim: int, latent_bits: int) -> float:
        """One uniform of 24 bits a dimension, whatever the number of samples."""
        return 24 * latent_dim

    def _bins(self, z: Tensor, t: int):
        """Q of layer t as bin units: mean and std (K, B, L), float64."""
        loc, scale = self._q(z, t)
        return loc / self.grid.delta, (scale / self.grid.delta).clamp_min(1e-12)

    def _cdf(self, i: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """F(i): Q's mass of the bins <= i in units of 2^-24 (0 below the grid, 2^24 at
        its top bin), an integer tensor, computed alike on both sides."""
        n = self.grid.n
        f = torch.floor(ONE * torch.special.ndtr((i + 0.5 - mean) / std)).long()
        return torch.where(i >= n, ONE, torch.where(i < -n, 0, f))

    def _quantile(self, v: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The bin i with F(i - 1) <= v < F(i): the Gaussian's quantile, corrected by a
        step where it lands beside its bin, then bisection over the grid where that did
        not settle it (the far tails, where many bins hold no mass)."""
        n = self.grid.n
        i = torch.ceil(mean + std * torch.special.ndtri((v.double() + 0.5) / ONE) - 0.5)
        i = i.clamp(-n, n)
        step = (self._cdf(i, mean, std) <= v).double() - (self._cdf(i - 1, mean, std) > v).double()
        bad = step != 0
        if bad.any():
            vb, mb, sb = v[bad], mean[bad], std[bad]
            ib = i[bad] + step[bad]
            off = (self._cdf(ib, mb, sb) <= vb) | (self._cdf(ib - 1, mb, sb) > vb)
            if off.any():
                ib[off] = self._bisect(vb[off], mb[off], sb[off])
            i[bad] = ib
        return i

    def _bisect(self, v: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        n = self.grid.n
        lo, hi = torch.full_like(mean, -n - 1), torch.full_like(mean, n)  # F(lo) <= v < F(hi)
        while (hi - lo > 1).any():
            mid = torch.floor((lo + hi) / 2)
            below = self._cdf(mid, mean, std) <= v
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return hi

    def _offsets(self, t: int) -> Tensor:
        """o_k of layer t (K, 1, L): splitmix64 of (k, t, d), 24 bits; o_0 = 0."""
        k = np.arange(self.K, dtype=np.uint64)[:, None]
        d = np.arange(self.dim, dtype=np.uint64)[None, :] + np.uint64(t * self.dim)
        with np.errstate(over="ignore"):
            h = (k * np.uint64(0x10000) + d + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
        o = (h >> np.uint64(40)).astype(np.int64)
        o[0] = 0
        return torch.as_tensor(o)[:, None, :]

    def _layer(self, z: Tensor, bins, u: Tensor, t: int) -> None:
        """Every particle's layer t from u (B, L) of that layer."""
        mean, std = self._bins(z, t)
        v = (u.to(z.device) + self._offsets(t).to(z.device)) % ONE
        i = self._quantile(v, mean, std)
        bins[t][:] = i.long().cpu().numpy()
        z[..., t * self.dim:(t + 1) * self.dim] = i * self.grid.delta

    def draw(self, coder, z, bins):
        halves = coder.decode(coder_models().Uniform(HALF), 2 * self.B * self.T * self.dim)
        h = torch.as_tensor(halves.astype(np.int64)).reshape(2, self.B, self.T * self.dim)
        self.u = h[0] * HALF + h[1]
        for t in range(self.T):
            self._layer(z, bins, self.u[:, t * self.dim:(t + 1) * self.dim], t)

    def _span(self, z, bins, j, t):
        """F(i_j - 1) and the mass of the chosen particle's bins in layer t, (B, L)."""
        mean, std = self._bins(z, t)
        pick = (torch.as_tensor(j, dtype=torch.long), torch.arange(self.B))
        i = torch.as_tensor(bins[t][j, np.arange(self.B)], dtype=torch.float64,
                            device=z.device)
        lo = self._cdf(i - 1, mean[pick], std[pick])
        return lo, self._cdf(i, mean[pick], std[pick]) - lo

    def keep(self, coder, z, bins, j, others):
        o = torch.as_tensor(j, dtype=torch.long)
        for t in reversed(range(self.T)):  # u's place inside each bin of particle j
            lo, mass = self._span(z, bins, j, t)
            u = self.u[:, t * self.dim:(t + 1) * self.dim]
            r = ((u + self._offsets(t)[o, 0]) % ONE - lo.cpu()).reshape(-1).numpy()
            at = mass.reshape(-1).cpu().numpy() >= 2
            coder.encode_reverse(r[at].astype(np.int32), coder_models().Uniform(),
                                 mass.reshape(-1).cpu().numpy()[at].astype(np.int32))

    def recover(self, coder, z, bins, j, others):
        o = torch.as_tensor(j, dtype=torch.long)
        self.u = torch.zeros(self.B, self.T * self.dim, dtype=torch.long)
        for t in range(self.T):
            lo, mass = self._span(z, bins, j, t)
            m = mass.reshape(-1).cpu().numpy()
            if (m < 1).any():
                raise ValueError("a code outside its posterior")
            r = np.zeros(len(m), np.int64)
            r[m >= 2] = coder.decode(coder_models().Uniform(), m[m >= 2].astype(np.int32))
            v = lo.cpu() + torch.as_tensor(r).reshape(self.B, self.dim)
            u = (v - self._offsets(t)[o, 0]) % ONE
            self.u[:, t * self.dim:(t + 1) * self.dim] = u
            self._layer(z, bins, u, t)

    def give_back(self, coder, z, bins):
        halves = torch.stack([self.u // HALF, self.u % HALF]).reshape(-1).numpy()
        coder.encode_reverse(halves.astype(np.int32), coder_models().Uniform(HALF))
