"""One optimisation step of the training loop: the loss as a module (:class:`Loss`), and
:class:`Stepper`: forward and backward under the chosen precision, gradients averaged over
ranks by DistributedDataParallel, the step compiled where asked, then the gradients' norm
clipped (if asked), a spike's update skipped (if asked) and Adam or AdamW
(:func:`make_optimizer`). The chain from the loop to
the ELBO, with shapes: :mod:`vaelab.training`."""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import statistics
import time
from typing import Callable

import torch
from torch import nn

from ..config import TrainConfig
from ..devices import World, fast_bf16
from ..models.vae import VAE
from ..noise import batch_shard, seeded
from ..objectives import elbo

log = logging.getLogger(__name__)
Tensor = torch.Tensor

NORM_DECAY = 0.01  # weight of each step's gradient norm in the running mean (~100 steps)
SPIKE_WARMUP = 50  # skip_spikes skips no finite step before Adam has taken this many
AUTO_BF16_GAIN = 1.10  # precision = "auto": bf16 where the model's step is this much faster
AUTO_BF16_FLOPS = 2e8  # and not timed below about this many FLOPs a step (fp32 there)
AUTO_COMPILE_FLOPS = 5e12  # compile = "auto" on a CPU: a run of at least this many FLOPs


def make_optimizer(model: VAE, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam; AdamW when ``weight_decay`` > 0, decaying the nets' weight matrices and
    kernels only: not biases or scales, and none of the prior's parameters (a VampPrior's
    pseudo-inputs are images, a mixture's means are places: neither is a weight to
    shrink toward 0)."""
    if weight_decay > 0:
        prior = {id(p) for p in model.prior.parameters()}
        decay, rest = [], []
        for p in model.parameters():  # in the model's order: the checkpoint's groups
            (decay if p.ndim >= 2 and id(p) not in prior else rest).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": rest, "weight_decay": 0.0}]
        make = torch.optim.AdamW
    else:
        groups, make = [{"params": list(model.parameters())}], torch.optim.Adam
    try:  # fused: one kernel for all parameters (CUDA, and CPU on recent PyTorch)
        return make(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return make(groups, lr=lr)


class Loss(nn.Module):
    """The training loss as a module, the unit that DistributedDataParallel wraps and
    torch.compile compiles: ``(x, y, beta) -> (loss, sums)``, sums being this batch's
    [loss * B, sum ELBO, sum recon, sum KL]."""

    def __init__(self, model: VAE, tc: TrainConfig, device: torch.device):
        super().__init__()
        self.model, self.tc = model, tc
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16,
                             enabled=tc.precision == "bf16")

    def forward(self, x: Tensor, y: Tensor | None, beta: Tensor) -> tuple[Tensor, Tensor]:
        tc = self.tc
        with torch.autocast(**self.autocast):
            loss, t = elbo(self.model, x, tc.samples, beta, y, sample=not tc.autoencoder,
                           free_bits=tc.free_bits, iwae=tc.objective == "iwae",
                           kl_balance=tc.kl_balance, dreg=tc.iwae_gradient == "dreg")
        return loss, torch.stack([loss.detach() * x.shape[0], t.elbo.detach().sum(),
                                  t.recon.detach().sum(), t.kl.detach().sum()])


def dense_step_flops(model: VAE, batch: int) -> int:
    """A training step's arithmetic as a dense net's: 6 x batch x parameters (2 forward, 4
    backward); a conv net, which reuses its weights, does more."""
    return 6 * batch * sum(p.numel() for p in model.parameters())


def auto_precision(model: VAE, tc: TrainConfig, split, device: torch.device,
                   world: World) -> str:
    """``precision = "auto"`` resolved for this run: "bf16" where the device has fast
    bfloat16 products (:func:`~vaelab.devices.fast_bf16`) and this model's own training
    step, on the first batch of ``split`` (the training images), measures at least
    ``AUTO_BF16_GAIN`` times faster under bf16 autocast than in float32, on every rank;
    "fp32" otherwise. The products' rate alone does not say it: the casts around them cost
    more than bf16 saves on small nets (the digits' MLP), and on an AMX CPU the reference
    MLP at batch 128 gained nothing (docs/benchmarks.md). A step of fewer than about
    ``AUTO_BF16_FLOPS`` (6 x batch x parameters) is fp32 untimed: such a step is bound by
    per-operation overhead, which the casts add to (the digits' MLP, ~130 MFLOP, measured
    0.93-0.99), and a timing that small is noise where other work shares the cores."""
    n = min(tc.batch_size, len(split))
    flops = dense_step_flops(model, n)
    gain, why = None, "no fast bfloat16 products here"
    if flops < AUTO_BF16_FLOPS:  # per-op overhead, which autocast's casts add to, rules
        why = f"a step of ~{flops / 1e6:.0f} MFLOP: too small for bf16 to pay"
    elif fast_bf16(device):
        with seeded(None, device):
            x = split.batch(slice(0, n)).to(device)  # (a dynamic binarization draws: forked)
            y = split.labels[:n].to(device) if model.classes else None
        gain = bf16_step_gain(model, tc, x, y, device)
        why = (f"this model's training step {gain:.2f}x as fast under bf16 autocast as in "
               f"float32 here; bf16 from {AUTO_BF16_GAIN}x")
    choice = "bf16" if world.all(gain is not None and gain >= AUTO_BF16_GAIN, device) else "fp32"
    log.info("precision auto: %s (%s)", choice, why)
    return choice


def bf16_step_gain(model: VAE, tc: TrainConfig, x: Tensor, y: Tensor | None,
                   device: torch.device, rounds: int = 7, budget: float = 0.04) -> float:
    """The model's training step (forward and backward of its loss on ``x``) in float32
    over the same step under bf16 autocast: the median over ``rounds`` rounds of the ratio
    of the two timed back to back (a machine whose speed drifts moves both alike), a round
    as many steps as fill about ``budget`` seconds. On a copy of the model, the random
    streams forked: the run's weights and draws are untouched."""
    model = copy.deepcopy(model).train()
    losses = {p: Loss(model, dataclasses.replace(tc, precision=p), device)
              for p in ("fp32", "bf16")}
    beta = torch.tensor(1.0, device=device)

    def steps(p: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            losses[p](x, y, beta)[0].backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    with seeded(None, device):
        n = max(1, min(10, int(budget / max(steps("fp32", 1), steps("bf16", 1), 1e-6))))
        ratios = [steps("fp32", n) / steps("bf16", n) for _ in range(rounds)]  # (both warm)
    return statistics.median(ratios)


def fast_paths(tc: TrainConfig, model: VAE, device: torch.device, steps: int = 0,
               distributed: bool = False) -> dict[str, bool]:
    """Which of compile and channels-last a run of ``steps`` steps uses ("auto" resolved
    for this device). auto compiles a single-layer model's step on CUDA, and an MLP's on a
    CPU where the run is long enough to repay the compilation (4-30 s): at least
    AUTO_COMPILE_FLOPS in all (6 x batch x parameters a step). Compiled, the reference
    MLP's epochs measured 1.1-1.5x on an AMD EPYC, the Fashion-MNIST GELU MLP's 1.05x and
    the VampPrior config's 1.27-1.33x on Xeons; the digits Quick start (~0.2 TFLOP) stays
    eager (docs/benchmarks.md). Not for several processes on CPUs (not measured there)."""
    def pick(value: str, auto: bool) -> bool:
        return value == "yes" or (value == "auto" and auto)

    cuda, cpu = device.type == "cuda", device.type == "cpu"
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    work = steps * dense_step_flops(model, tc.batch_size)
    repaid = cpu and not distributed and not conv and work >= AUTO_COMPILE_FLOPS
    compiled = pick(tc.compile, (cuda or repaid) and model.layers == 1)
    if compiled and conv and tc.precision == "bf16" and device.type == "cpu":
        # measured with PyTorch 2.13: the compiled step under bf16 autocast on a CPU gives
        # a conv decoder of two or more stages zero gradients (tests/test_fast.py)
        log.warning("--compile with --precision bf16 is not used for conv nets on a CPU "
                    "(the compiled step loses the decoder's gradients); training eagerly")
        compiled = False
    # channels-last convolutions: measured 1.2x faster per fp32 step on a CPU as well
    return {"compile": compiled,
            "channels_last": pick(tc.channels_last, device.type in ("cuda", "cpu")) and conv}


class Stepper:
    """Forward, backward and Adam on a batch (this rank's shard of it): the loss under the
    chosen precision, gradients averaged over ranks by DistributedDataParallel, the
    forward/backward compiled where asked (a CUDA graph on CUDA)."""

    def __init__(self, model: VAE, opt: torch.optim.Optimizer, tc: TrainConfig,
                 device: torch.device, world: World, backend: str | Callable = "inductor",
                 norm_mean: float = 0.0, steps: int = 0):
        self.opt, self.world, self.device = opt, world, device
        self.model, self.clip, self.skip = model, tc.grad_clip, tc.skip_spikes
        # the global gradient norms before clipping, how many steps were clipped and how
        # many skipped; the running mean of the norms of the steps taken (skip_spikes)
        self.norms = torch.zeros(3, device=device)
        self.mean_norm = torch.tensor(norm_mean, device=device)
        # seconds of the compiled step's first call (its compilation): in all, and since
        # take_compiling(); the global batch size it was compiled for
        self.compile_seconds, self._compiling, self._batch = 0.0, 0.0, None
        paths = fast_paths(tc, model, device, steps, world.distributed)  # (the run's steps)
        self.channels_last = paths["channels_last"]
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            for p in model.parameters():  # a resumed run's Adam moments, loaded contiguous,
                for k, v in opt.state.get(p, {}).items():  # take their weights' layout
                    if v.shape == p.shape:  # (fused Adam on CUDA requires it)
                        opt.state[p][k] = torch.empty_like(p).copy_(v)
        net: nn.Module = Loss(model, tc, device)
        self.loss = net
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        self.eager = net
        if paths["compile"]:
            net = torch.compile(net, backend=backend, dynamic=False,
                                mode="reduce-overhead" if device.type == "cuda" and
                                backend == "inductor" else None)
        self.net = net
        log.info("training step: %s%s%s%s", "compiled" if paths["compile"] else "eager",
                 ", bf16 autocast" if tc.precision == "bf16" else "",
                 ", channels-last" if self.channels_last else "",
                 f", {world.size} processes" if world.distributed else "")

    def __call__(self, x: Tensor, y: Tensor | None, beta: float, n_global: int) -> Tensor:
        if x.shape[0] == 0:  # a last batch smaller than the number of ranks left this one none
            return self._empty_share(x, y, beta, n_global)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # DDP averages gradients over ranks; weighting by the shard's share keeps the
        # gradient that of the global batch's mean when shards differ in size
        share = x.shape[0] * self.world.size / n_global
        # one shape compiled per objective, the first (a full batch): the epoch's last,
        # smaller batch steps eagerly (compiling it too cost 5-25 s a shape, for one step).
        # Keyed by the global batch, so that every rank of a job steps the same way
        net = self.net if self._batch in (None, n_global) else self.eager
        first = net is not self.eager and self._batch is None
        t0 = time.perf_counter()
        try:
            sums = self._gradients(net, x, y, beta, share)
        except Exception as e:  # compilation can fail (no compiler, an unsupported GPU)
            if net is self.eager:
                raise
            why = " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:2])
            log.warning("the compiled training step failed (%s: %s); training eagerly from "
                        "here on (--compile no skips the attempt)", type(e).__name__, why)
            self.net = self.eager
            sums = self._gradients(self.net, x, y, beta, share)
        if first and self.net is not self.eager:
            self._batch = n_global
            took = time.perf_counter() - t0
            self.compile_seconds += took
            self._compiling += took
            log.info("compiled the training step for batches of %d in %.1f s", len(x), took)
        self._step()
        return sums

    def use(self, tc: TrainConfig) -> None:
        """Train on ``tc``'s objective from the next step on (the IWAE bound of a run's last
        epochs: ``TrainConfig.at``); a compiled step compiles again for it."""
        if tc != self.loss.tc:
            self.loss.tc = tc
            self._batch = None

    def _empty_share(self, x: Tensor, y: Tensor | None, beta: float, n_global: int) -> Tensor:
        """Take part in the gradients' all-reduce with one zero-weighted dummy example that
        draws the global batch's random numbers like every other rank (so the random
        streams of all ranks stay in step)."""
        dummy = torch.zeros(1, *x.shape[1:], device=x.device)
        y1 = None if y is None else torch.zeros(1, dtype=y.dtype, device=y.device)
        with batch_shard(0, 1, n_global):
            self._gradients(self.eager, dummy, y1, beta, 0.0)
        self._step()
        return torch.zeros(4, device=self.device)

    def _step(self) -> None:
        if not (self.clip or self.skip):
            self.opt.step()
            return
        # the gradients are the global batch's here (DDP has averaged them): every rank
        # clips and skips alike
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip or math.inf)
        spike = torch.zeros((), device=self.device)
        if self.skip:  # a norm far above the running mean (a batch whose loss explodes)
            taken, fresh = self._steps_taken(), self.mean_norm == 0  # (no mean yet)
            # the first steps' norms change fast: none skipped before SPIKE_WARMUP steps
            warm = (taken >= SPIKE_WARMUP) & ~fresh
            spike = (~norm.isfinite() | ((norm > self.skip * self.mean_norm) & warm)).float()
            # the mean follows the norms, after the warm-up each taken at most at the bound:
            # one spike moves it little, and norms that stay higher raise it (at factor 10, by
            # 9 % a step) until their steps are taken again. Its weight is 1 / (steps + 1)
            # until that reaches NORM_DECAY (the plain mean of the first norms)
            norm0 = norm.nan_to_num(0.0, 0.0)
            seen = torch.where(warm, torch.minimum(norm0, self.skip * self.mean_norm), norm0)
            weight = torch.where(fresh, 1.0, (1 / (taken + 1)).clamp(min=NORM_DECAY))
            self.mean_norm.lerp_(seen, weight)
        self.norms += torch.stack([norm, (norm > (self.clip or math.inf)).float(), spike])
        if not self.skip:
            self.opt.step()
        elif getattr(self.opt, "_step_supports_amp_scaling", False):
            self.opt.found_inf = spike  # fused Adam skips the step where it is 1 (no sync)
            self.opt.step()
        elif not spike.item():
            self.opt.step()

    def _steps_taken(self) -> Tensor:
        """The updates Adam has taken (its step count: checkpointed, and not counting the
        skipped ones), as a tensor on the device (no host sync)."""
        state = next(iter(self.opt.state.values()), {})
        count = state.get("step", 0.0)
        return count.to(self.device, torch.float32) if isinstance(count, Tensor) else \
            torch.tensor(float(count), device=self.device)

    def take_compiling(self) -> float:
        """Seconds spent compiling the step since the last call."""
        took, self._compiling = self._compiling, 0.0
        return took

    def take_norms(self, steps: int) -> dict[str, float]:
        """Since the last call (``steps`` steps): the mean gradient norm before clipping, and
        the share of the steps clipped and skipped, where the run clips or skips."""
        if not (self.clip or self.skip):
            return {}
        total, clipped, skipped = (self.norms / steps).tolist()
        self.norms.zero_()
        return {"grad_norm": total, **({"clipped": clipped} if self.clip else {}),
                **({"skipped": skipped} if self.skip else {})}

    def _gradients(self, net, x: Tensor, y: Tensor | None, beta: float, share: float) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss, sums = net(x, y, torch.tensor(beta, device=self.device))
        (loss * share if share != 1 else loss).backward()
        return sums
