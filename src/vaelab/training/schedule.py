"""What changes over a run besides the gradient step: the learning rate per step
(:class:`Schedule`: constant, cosine, the IWAE paper's steps, reduce-on-plateau, each with
an optional linear warm-up) and the exponential moving average of the weights
(:class:`WeightAverage`, Polyak averaging).

Both resume exactly: the learning rate is a function of the step and of the plateau
state, which the checkpoint keeps; the average is saved beside the weights."""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..config import TrainConfig

log = logging.getLogger(__name__)

IWAE_STAGES = 8  # Burda et al. 2016: i = 0..7, 3^i epochs each (3280 epochs in all)


def iwae_stage(epoch: int) -> int:
    """The stage i of the IWAE schedule that epoch (from 1) is in: stage i covers epochs
    (3^i - 1)/2 + 1 .. (3^(i+1) - 1)/2, i.e. 1, 3, 9, ... epochs."""
    i = 0
    while i < IWAE_STAGES - 1 and (3 ** (i + 1) - 1) // 2 < epoch:
        i += 1
    return i


def annealed(high: float, low: float, done: float) -> float:
    """A half cosine from ``high`` to ``low``, ``done`` of the way (clamped to [0, 1])."""
    done = min(1.0, max(0.0, done))
    return low + (high - low) * 0.5 * (1 + math.cos(math.pi * done))


@dataclass
class PlateauState:
    """The reduce-on-plateau rule's memory: the learning rate's factor so far, the best
    validation score and the epochs since it improved."""

    factor: float = 1.0
    best: float = -math.inf
    bad_epochs: int = 0


class Schedule:
    """The learning rate of every step of a run. ``horizon``: the epochs a cosine anneals
    over (the run's epochs when it started; a run resumed for more epochs stays at
    ``min_lr`` after them)."""

    def __init__(self, tc: TrainConfig, n_batches: int, horizon: int,
                 plateau: PlateauState | None = None):
        self.tc, self.n_batches, self.horizon = tc, n_batches, horizon
        self.plateau = plateau or PlateauState()

    def lr(self, epoch: int, step: int) -> float:
        """The learning rate of batch ``step`` (from 0) of ``epoch`` (from 1)."""
        tc = self.tc
        t = (epoch - 1) * self.n_batches + step  # steps before this one
        warm = tc.lr_warmup * self.n_batches
        if tc.lr_schedule == "cosine":
            total = max(1.0, self.horizon * self.n_batches - warm)
            lr = annealed(tc.lr, tc.min_lr, (t - warm) / total)
        elif tc.lr_schedule == "iwae":
            lr = tc.lr * 10 ** (-iwae_stage(epoch) / 7)
        elif tc.lr_schedule == "plateau":
            lr = max(tc.min_lr, tc.lr * self.plateau.factor)
        else:
            lr = tc.lr
        if tc.lr_cooldown:  # the last epochs: from the schedule's value down to min_lr
            cool = tc.lr_cooldown * self.n_batches
            lr = annealed(lr, tc.min_lr, (t + cool - tc.epochs * self.n_batches + 1) / cool)
        return lr * min(1.0, (t + 1) / warm) if t < warm else lr

    def end_epoch(self, score: float) -> None:
        """The reduce-on-plateau rule, after each epoch's validation (higher is better)."""
        p = self.plateau
        if self.tc.lr_schedule != "plateau" or not math.isfinite(score):
            return
        if score > p.best:
            p.best, p.bad_epochs = score, 0
            return
        p.bad_epochs += 1
        if p.bad_epochs > self.tc.plateau_patience and \
                self.tc.lr * p.factor > self.tc.min_lr:
            p.factor *= self.tc.plateau_factor
            p.bad_epochs = 0
            log.info("plateau: no better validation bound for %d epochs; learning rate now "
                     "%.3g", self.tc.plateau_patience + 1,
                     max(self.tc.min_lr, self.tc.lr * p.factor))

    def state(self) -> dict:
        return {"horizon": self.horizon, **asdict(self.plateau)}

    @classmethod
    def restore(cls, tc: TrainConfig, n_batches: int, state: dict | None,
                epochs: int) -> "Schedule":
        """From a checkpoint's state (None: a new run, annealed over ``epochs``)."""
        if not state:
            return cls(tc, n_batches, epochs)
        plateau = {k: v for k, v in state.items() if k != "horizon"}
        horizon = int(state["horizon"])
        if tc.lr_schedule == "cosine" and epochs > horizon:
            log.warning("the cosine schedule of this run anneals over %d epochs; epochs %d-%d "
                        "run at min_lr = %g", horizon, horizon + 1, epochs, tc.min_lr)
        return cls(tc, n_batches, horizon, PlateauState(**plateau))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


class WeightAverage:
    """An exponential moving average of a model's parameters, updated after each step:
    avg <- avg + (1 - d) (w - avg), with d = min(decay, (1 + n) / (10 + n)) after n
    updates, so that the first epochs are not dragged towards the initial weights. One
    multi-tensor lerp per step, and no device synchronisation (unlike
    torch.optim.swa_utils.AveragedModel, which asks the device for its count each step).
    Buffers are the model's when the average began."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.source = decay, model
        self.model = copy.deepcopy(model).requires_grad_(False)
        self._pairs: tuple[list, list] | None = None  # (average's, source's) parameters

    @torch.no_grad()
    def update(self, n: int) -> None:
        """After the ``n``-th update so far (from 0) of the source weights."""
        d = min(self.decay, (1 + n) / (10 + n))
        if self._pairs is None:  # (the Parameter objects outlive .to() and loading)
            self._pairs = list(self.model.parameters()), list(self.source.parameters())
        torch._foreach_lerp_(*self._pairs, 1 - d)
