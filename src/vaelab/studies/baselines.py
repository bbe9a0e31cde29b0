"""Maximum-likelihood density models from the lecture's first part, as baselines.

Theta_MLE = argmax_Theta prod_i f(x_i; Theta). Each model is fitted on the training split
and reports the test negative log-likelihood of the *discrete* data (binary, or the
data set's grey levels) in nats per example, as ``evaluate`` does for a VAE:

* ``bernoulli``  factorized Bernoulli, p_d = mean of x_d (closed form);
* ``gaussian``   factorized Gaussian, mu_d = mean, sigma_d^2 = variance (closed form),
                 scored as a discretized Gaussian: the probability of each level's bin;
* ``mixture``    mixture of K factorized Bernoullis, fitted by EM (Dempster et al. 1977);
* ``ppca``       probabilistic PCA (Tipping & Bishop 1999), closed-form MLE on uniformly
                 dequantized data; its exact Gaussian density gives the lower bound
                 log P(x) >= E_u log p((k + u) / K) - D log K (Theis et al. 2016), so the
                 reported NLL is an upper bound.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from ..data.splits import Data
from ..models.distributions import discretized_normal_log_prob, to_levels
from ..objectives import bits_per_dim, mean_stderr
from ..registry import Registry

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization: level k -> (k + u) / K, u ~ U(0, 1), a point in [0, 1]."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (to_levels(x, levels) + u) / levels


# ---------------------------------------------------------------------------------------
@dataclass
class FactorizedBernoulli:
    """p(x) = prod_d p_d^x_d (1 - p_d)^(1 - x_d). MLE: p_d = mean of x_d, kept 1/(2N) away
    from 0 and 1 so that a value never seen in training costs log 2N nats, not infinity."""

    p: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> "FactorizedBernoulli":  # x (N, D) in [0, 1]
        eps = 1.0 / (2 * len(x))
        return cls(x.double().mean(0).clamp(eps, 1 - eps))

    def log_prob(self, x: Tensor) -> Tensor:  # (N, D) binary -> (N,)
        x = x.double()
        return x @ self.p.log() + (1 - x) @ torch.log1p(-self.p)

    def n_params(self) -> int:
        return self.p.numel()


@dataclass
class FactorizedGaussian:
    """x_d ~ N(mu_d, sigma_d^2), MLE mu_d = mean, sigma_d^2 = variance (at least
    (1/(K-1))^2 / 12, the variance of one level's bin), discretized to the K levels."""

    loc: Tensor
    scale: Tensor
    levels: int

    @classmethod
    def fit(cls, x: Tensor, levels: int) -> "FactorizedGaussian":
        x = x.double()
        var = x.var(0, unbiased=False).clamp_min(1.0 / (12 * (levels - 1) ** 2))
        return cls(x.mean(0), var.sqrt(), levels)

    def log_prob(self, x: Tensor) -> Tensor:
        return discretized_normal_log_prob(x.double(), self.loc, self.scale, self.levels).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws (n, D): a Gaussian draw per pixel, taken to its level's bin (the end
        bins hold the tails), which is a draw from the discretized Gaussian."""
        eps = torch.randn((n, *self.loc.shape), generator=generator, dtype=self.loc.dtype)
        k = self.levels - 1
        return torch.round((self.loc + self.scale * eps).clamp(0, 1) * k) / k

    def n_params(self) -> int:
        return 2 * self.loc.numel()


@dataclass
class BernoulliMixture:
    """p(x) = sum_k pi_k prod_d mu_kd^x_d (1 - mu_kd)^(1 - x_d), fitted by EM. The M-step
    keeps mu in [eps, 1 - eps], a box on which it is still the exact maximiser, so the
    log-likelihood never decreases (``history`` records it per iteration)."""

    log_pi: Tensor  # (K,)
    mu: Tensor  # (K, D)
    history: list[float] = field(default_factory=list)

    def _joint(self, x: Tensor) -> Tensor:  # (N, K): log pi_k + log p(x | k)
        return self.log_pi + x @ self.mu.log().T + (1 - x) @ torch.log1p(-self.mu).T

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._joint(x.double()), dim=1)

    @classmethod
    def fit(cls, x: Tensor, components: int = 50, iterations: int = 100, tol: float = 1e-4,
            seed: int = 0, eps: float = 1e-6) -> "BernoulliMixture":
        x = x.double()
        n = len(x)
        g = torch.Generator().manual_seed(seed)
        resp = torch.rand(n, components, generator=g, dtype=torch.float64).to(x.device)
        resp /= resp.sum(1, keepdim=True)  # random soft assignment, then M-step
        model = cls(torch.zeros(components, dtype=torch.float64, device=x.device),
                    torch.full((components, x.shape[1]), 0.5, dtype=torch.float64,
                               device=x.device))
        from tqdm.auto import tqdm

        bar = tqdm(range(iterations), desc=f"EM, K={components}", leave=False, disable=None)
        for it in bar:
            nk = resp.sum(0)  # M-step
            model.log_pi = (nk / n).log()
            model.mu = ((resp.T @ x) / nk[:, None]).clamp(eps, 1 - eps)
            joint = model._joint(x)  # E-step
            ll = torch.logsumexp(joint, dim=1)
            resp = torch.exp(joint - ll[:, None])
            model.history.append(ll.mean().item())
            bar.set_postfix(loglik=f"{model.history[-1]:.2f}", refresh=False)
            if it > 0 and model.history[-1] - model.history[-2] < tol:
                break
        bar.close()
        return model

    def n_params(self) -> int:
        return self.mu.numel() + self.log_pi.numel() - 1


@dataclass
class PPCA:
    """x = W z + mu + eps, z ~ N(0, I_q), eps ~ N(0, sigma^2 I): x ~ N(mu, W W^T + sigma^2 I).
    MLE (Tipping & Bishop 1999): with eigenpairs (lambda_i, u_i) of the sample covariance,
    sigma^2 = mean of the D - q smallest lambda_i, W = U_q (Lambda_q - sigma^2 I)^(1/2)."""

    loc: Tensor
    W: Tensor
    sigma2: float
    levels: int

    @classmethod
    def fit(cls, y: Tensor, q: int, levels: int) -> "PPCA":  # y (N, D) continuous
        y = y.double()
        loc = y.mean(0)
        yc = y - loc
        cov = yc.T @ yc / len(y)
        lam, U = torch.linalg.eigh(cov)  # ascending
        lam, U = lam.flip(0), U.flip(1)
        sigma2 = lam[q:].mean().item()
        W = U[:, :q] * (lam[:q] - sigma2).clamp_min(0).sqrt()
        return cls(loc, W, sigma2, levels)

    def density(self) -> torch.distributions.MultivariateNormal:
        D = self.loc.numel()
        cov = self.W @ self.W.T + self.sigma2 * torch.eye(D, dtype=self.W.dtype,
                                                          device=self.W.device)
        return torch.distributions.MultivariateNormal(self.loc, covariance_matrix=cov)

    def log_prob(self, x: Tensor, samples: int = 8, seed: int = 0) -> Tensor:
        """Lower bound on log P(x): E_u log p(dequantized x) - D log K, u averaged."""
        g = torch.Generator(device=x.device).manual_seed(seed)
        p = self.density()
        ll = torch.stack([p.log_prob(dequantize(x.double(), self.levels, g))
                          for _ in range(samples)]).mean(0)
        return ll - x.shape[-1] * math.log(self.levels)

    def n_params(self) -> int:
        return self.W.numel() + self.loc.numel() + 1


# ---------------------------------------------------------------------------------------
BASELINES: Registry = Registry("baseline")


@dataclass(frozen=True)
class BaselineSettings:
    components: int = 50
    em_iterations: int = 100
    ppca_dim: int = 50
    seed: int = 0


def _flat(t: Tensor) -> Tensor:
    return t.flatten(1)


@BASELINES.register("bernoulli")
def _bernoulli(data: Data, s: BaselineSettings):
    if not data.binary:
        return None, "needs binary data (--binarize dynamic or static)"
    # under dynamic binarization the mean of the grey values is the MLE of the expected
    # log-likelihood over draws; otherwise it is the mean of the (binary) values
    return FactorizedBernoulli.fit(_flat(data.train.stored().double() / data.train.max_value)), \
        "exact"


@BASELINES.register("gaussian")
def _gaussian(data: Data, s: BaselineSettings):
    g = torch.Generator(device=data.train.images.device).manual_seed(s.seed)
    x = _flat(data.train.batch(slice(None), g))  # one draw under dynamic binarization
    return FactorizedGaussian.fit(x, data.levels), "exact (discretized)"


@BASELINES.register("mixture")
def _mixture(data: Data, s: BaselineSettings):
    if not data.binary:
        return None, "needs binary data (--binarize dynamic or static)"
    g = torch.Generator(device=data.train.images.device).manual_seed(s.seed)
    x = _flat(data.train.batch(slice(None), g))  # one draw under dynamic binarization
    return BernoulliMixture.fit(x, s.components, s.em_iterations, seed=s.seed), \
        f"exact, K={s.components}"


@BASELINES.register("ppca")
def _ppca(data: Data, s: BaselineSettings):
    levels = data.levels
    g = torch.Generator(device=data.train.images.device).manual_seed(s.seed)
    y = dequantize(_flat(data.train.batch(slice(None), g)), levels, g)
    q = min(s.ppca_dim, y.shape[1] - 1)
    return PPCA.fit(y, q, levels), f"upper bound (dequantized), q={q}"


def run_baselines(data: Data, names: list[str] | None = None, split: str = "test",
                  settings: BaselineSettings = BaselineSettings(), progress: bool = False
                  ) -> list[dict]:
    """Fit each baseline on the training split; test NLL in nats per example and bits/dim."""
    from tqdm.auto import tqdm

    x = _flat(data.split(split).batch(slice(None)))
    dims = x.shape[1]
    rows = []
    for name in tqdm(names or BASELINES.names(), desc="baselines", unit="model", leave=False,
                     disable=None if progress else True):
        t0 = time.perf_counter()
        model, note = BASELINES.get(name)(data, settings)
        if model is None:
            log.warning("baseline %s skipped: %s", name, note)
            continue
        fit_s = time.perf_counter() - t0
        nll, se = mean_stderr(-model.log_prob(x))
        rows.append({"model": name, "nll": nll, "nll_stderr": se,
                     "bits_per_dim": bits_per_dim(nll, dims), "params": model.n_params(),
                     "fit_seconds": fit_s, "note": note, "split": split, "n": len(x),
                     "dataset": data.name})
    return rows
