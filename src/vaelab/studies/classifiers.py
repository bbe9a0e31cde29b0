"""Generative vs discriminative classifiers, and what the codes of an autoencoder know.

Generative (estimate the model, then define the classifier by Bayes rule):

    p(y|x) = p(x|y) p(y) / sum_y' p(x|y') p(y')

with log p(x|y) the importance-sampled estimate of a class-conditional VAE (all classes at
once), or the closed forms of Gaussian and Bernoulli Naive Bayes. Discriminative (p(y|x)
directly): logistic regression on pixels and an MLP. Probes of learned features: logistic
regression and k-nearest neighbours on the posterior means E_q[z|x] of a VAE and of an
autoencoder of the same size (the same nets, z = E_q[z|x], trained on -log p(x|z) alone).

Every classifier gets the same nested, seeded, class-balanced subsets of labelled training
images (the data-efficiency curve; Ng & Jordan 2001); those trained by gradient steps (the
conditional VAE, the MLP) keep a fifth of their subset aside to choose their epoch.
Features of the VAE and autoencoder are learned without labels from the whole training
split; only the probe sees the labels.
Binarized data sets are classified on one fixed draw of the training images, so that every
model sees the same pixels."""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..data.splits import Data, Split
from ..models.nets import MLP
from ..models.vae import VAE
from ..noise import seeded
from ..registry import Registry
from ..training.loop import train
from ..objectives import log_likelihood

Tensor = torch.Tensor
log = logging.getLogger(__name__)

SIZES = (100, 300, 1000, 3000, 10000)  # then "all"


# ---------------------------------------------------------------------------------------
# Bayes rule and the scores
# ---------------------------------------------------------------------------------------
def bayes_posterior(log_lik: Tensor, log_prior: Tensor) -> Tensor:
    """log p(y|x) = log p(x|y) + log p(y) - log sum_y' p(x|y') p(y'): (N, K), (K,) -> (N, K)."""
    return torch.log_softmax(log_lik.double() + log_prior.double(), dim=1)


def class_prior(y: Tensor, classes: int) -> Tensor:
    """log p(y): class frequencies of the labelled examples, add-one smoothed (K,)."""
    counts = torch.bincount(y.cpu(), minlength=classes).double() + 1.0
    return (counts / counts.sum()).log()


@torch.no_grad()
def class_log_likelihoods(model: VAE, x: Tensor, k: int = 16, batch_size: int = 100,
                          seed: int = 0) -> Tensor:
    """Importance-sampled log p(x|y) of a conditional VAE for every image and every class,
    (N, K): each batch of B images is evaluated for all K labels at once (K*B rows)."""
    kk = model.classes
    out = []
    for xb in x.split(batch_size):
        b = xb.shape[0]
        xs = xb.expand(kk, *xb.shape).reshape(kk * b, *xb.shape[1:])  # (K*B, C, H, W)
        ys = torch.arange(kk, device=xb.device).repeat_interleave(b)  # (K*B,)
        ll = log_likelihood(model, xs, k, batch_size=kk * b, seed=seed, labels=ys)
        out.append(ll.reshape(kk, b).T)
    return torch.cat(out)


def scores(log_post: Tensor, y: Tensor, bins: int = 15, probabilistic: bool = True) -> dict:
    """Accuracy, log-loss (mean -log p(y|x), nats) and expected calibration error (top-label
    confidence in ``bins`` equal-width bins; Guo et al. 2017)."""
    log_post, y = log_post.double().cpu(), y.cpu()
    conf, pred = log_post.exp().max(1)
    correct = (pred == y).double()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    ece = sum((which == b).sum().item() / len(y) *
              abs(correct[which == b].mean().item() - conf[which == b].mean().item())
              for b in range(bins) if (which == b).any())
    nll = -log_post.gather(1, y[:, None]).mean().item() if probabilistic else None
    return {"accuracy": correct.mean().item(), "log_loss": nll, "ece": ece}


def nested_subsets(labels: Tensor, sizes: list[int], seed: int = 0) -> dict[int, Tensor]:
    """Seeded, nested, class-balanced subsets: every subset is a prefix of one order that
    takes the classes in turn (the i-th example of each class, in random class order, before
    any (i+1)-th), so small subsets hold every class."""
    y = labels.cpu()
    g = torch.Generator().manual_seed(seed)
    rank = torch.empty(len(y), dtype=torch.float64)
    for c in y.unique():
        members = torch.nonzero(y == c)[:, 0]
        rank[members[torch.randperm(len(members), generator=g)]] = \
            torch.arange(len(members), dtype=torch.float64)
    order = torch.argsort(rank + torch.rand(len(y), generator=g, dtype=torch.float64))
    return {n: order[:n] for n in sizes}


# ---------------------------------------------------------------------------------------
# The classifiers: each fits on the subset ``idx`` and returns log p(y|x) on the test set
# ---------------------------------------------------------------------------------------
@dataclass
class Task:
    """One labelled data set as every classifier sees it, and what they share."""

    data: Data  # binarized once if the protocol binarizes
    cfg: Config  # data and model settings; train settings for the models trained here
    out_dir: Path
    epochs: int = 20
    min_steps: int = 1000
    k: int = 16
    seed: int = 0
    # name -> (training codes, test codes, seconds it took to learn them)
    features: dict[str, tuple[Tensor, Tensor, float]] = dataclasses.field(default_factory=dict)
    _pixels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def classes(self) -> int:
        return len(self.data.classes)

    def pixels(self, split: str) -> np.ndarray:
        """A split's images as (N, D) float32 rows, for scikit-learn (made once)."""
        if split not in self._pixels:
            self._pixels[split] = self.data.split(split).batch(slice(None)).flatten(1).cpu().numpy()
        return self._pixels[split]

    def epochs_for(self, n: int) -> int:
        return budget_epochs(n, self.cfg.train.batch_size, self.epochs, self.min_steps)


def budget_epochs(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Epochs on n examples: ``epochs`` passes, but at least ``min_steps`` optimizer steps
    (a model fitted on 100 images gets as many updates as one fitted on 1000)."""
    per_epoch = math.ceil(n / batch_size)
    return max(1, math.ceil(max(min_steps, epochs * per_epoch) / per_epoch))


@dataclass
class Classifier:
    kind: str  # generative, discriminative or probe
    fit: Callable[[Task, Tensor], Tensor]  # (task, idx) -> log p(y|x) on the test set (N, K)
    probabilistic: bool = True  # False: its "probabilities" are votes, no log-loss
    features: str | None = None  # a probe: the codes it reads


CLASSIFIERS: Registry[Classifier] = Registry("classifier")


def _sklearn(task: Task, idx: Tensor, estimator, x_train: np.ndarray | None = None,
             x_test: np.ndarray | None = None) -> Tensor:
    """Fit a scikit-learn classifier on the subset (pixels unless given); log p(y|x)."""
    if x_train is None:
        x_train, x_test = task.pixels("train"), task.pixels("test")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    i = idx.numpy()
    with warnings.catch_warnings():  # lbfgs at max_iter: the fit is used as it stands
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x_train[i], task.data.train.labels.cpu().numpy()[i])
    proba = np.zeros((len(x_test), task.classes))
    proba[:, estimator.classes_] = estimator.predict_proba(x_test)  # classes absent: p = 0
    return torch.from_numpy(proba).clamp_min(1e-300).log()


def _register(name: str, kind: str, probabilistic: bool = True, features: str | None = None):
    def deco(fn):
        CLASSIFIERS.register(name)(Classifier(kind, fn, probabilistic, features))
        return fn
    return deco


def fresh_run(run: Path) -> Path:
    """A run directory this command owns: emptied before it trains there again."""
    import shutil

    if run.exists():
        shutil.rmtree(run)
    return run


def held_out(idx: Tensor, every: int = 5) -> tuple[Tensor, Tensor]:
    """Every ``every``-th labelled example is held out to choose the epoch of a model
    trained by gradient steps (early stopping), so no label outside the subset is used."""
    keep = torch.arange(len(idx)) % every != every - 1
    return idx[keep], idx[~keep]


@_register("conditional VAE", "generative")
def _cvae(task: Task, idx: Tensor) -> Tensor:
    """A class-conditional VAE on the labelled subset (the epoch with the best ELBO on its
    held-out fifth); p(y|x) by Bayes rule."""
    d = task.data

    def part(i: Tensor) -> Split:
        return dataclasses.replace(d.train.subset(i), dynamic=False)

    fit, val = held_out(idx)
    data = dataclasses.replace(d, train=part(fit), val=part(val))
    cfg = task.cfg.override(conditional=True, epochs=task.epochs_for(len(fit)), kl_warmup=0)
    model = train(cfg, fresh_run(task.out_dir / f"conditional-vae-{len(idx)}"), data=data,
                  progress=False).model
    log_lik = class_log_likelihoods(model, d.test.batch(slice(None)), task.k, seed=task.seed)
    labels = d.train.subset(idx).labels
    return bayes_posterior(log_lik, class_prior(labels, task.classes))


@_register("gaussian naive Bayes", "generative")
def _gnb(task: Task, idx: Tensor) -> Tensor:
    from sklearn.naive_bayes import GaussianNB

    return _sklearn(task, idx, GaussianNB(var_smoothing=1e-2))


@_register("bernoulli naive Bayes", "generative")
def _bnb(task: Task, idx: Tensor) -> Tensor:
    from sklearn.naive_bayes import BernoulliNB

    return _sklearn(task, idx, BernoulliNB(binarize=0.5))


@_register("logistic regression", "discriminative")
def _logreg(task: Task, idx: Tensor) -> Tensor:
    from sklearn.linear_model import LogisticRegression

    return _sklearn(task, idx, LogisticRegression(C=0.1, max_iter=300))


@_register("MLP", "discriminative")
def _mlp(task: Task, idx: Tensor) -> Tensor:
    """An MLP with the VAE encoder's hidden widths: cross-entropy, AdamW, and the epoch with
    the lowest loss on the held-out fifth of the subset."""
    d, tc = task.data, task.cfg.train
    dev = d.train.images.device
    fit, val = (i.to(dev) for i in held_out(idx))
    x, y = d.train.batch(fit).flatten(1), d.train.labels[fit]
    xv, yv = d.train.batch(val).flatten(1), d.train.labels[val]
    ce = torch.nn.functional.cross_entropy
    with seeded(task.seed, dev):
        net = MLP(x.shape[1], task.cfg.model.hidden, task.classes,
                  task.cfg.model.activation).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=1e-2)
        best, state = math.inf, None
        for _ in range(task.epochs_for(len(fit))):
            for b in torch.randperm(len(x), device=dev).split(tc.batch_size):
                loss = ce(net(x[b]), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                v = ce(net(xv), yv).item()
            if v < best:
                best, state = v, {k: t.clone() for k, t in net.state_dict().items()}
        net.load_state_dict(state)
    with torch.no_grad():
        return torch.log_softmax(net(d.test.batch(slice(None)).flatten(1)).double(), 1).cpu()


def _probe(name: str, knn: bool):
    def fit(task: Task, idx: Tensor) -> Tensor:
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        z_train, z_test, _ = task.features[name]
        est = KNeighborsClassifier(10) if knn else \
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return _sklearn(task, idx, est, z_train.numpy(), z_test.numpy())
    return fit


for _rep in ("VAE", "autoencoder"):
    _register(f"logistic regression on {_rep} codes", "probe",
              features=_rep)(_probe(_rep, knn=False))
    _register(f"10-NN on {_rep} codes", "probe", False, _rep)(_probe(_rep, knn=True))
