"""The training loop: epochs over device-resident batches, one optimisation step
(:class:`Stepper`: precision, DistributedDataParallel, compilation), validation, and the
best and last checkpoints and metrics log of the run directory (:mod:`vaelab.rundir`)."""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import Config, ConfigError, TrainConfig
from .data import Data, load_data
from .distributed import World, join, noise_shard
from .model import VAE, seeded
from .objectives import bits_per_dim, elbo, elbo_over, unpack
from .rundir import (RunError, TrainState, load_run, read_metrics, read_safetensors,
                     restore_checkpoint, save_checkpoint, save_weights)

log = logging.getLogger(__name__)
Tensor = torch.Tensor


class GreyBernoulliWarning(UserWarning):
    """Grey-valued data met a Bernoulli likelihood: the numbers are not log-likelihoods."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; use --device auto")
    return torch.device(name)


def check_likelihood(model: VAE, data: Data) -> None:
    if model.likelihood.binary and not data.binary:
        warnings.warn(
            f"the {model.likelihood.name} likelihood is meant for binary data, but {data.name} "
            "is grey-valued (binarize=none): its 'log-likelihood' is then a cross-entropy, not "
            "a likelihood of the data. Use --binarize dynamic, or --likelihood dgaussian (or "
            "the densities cbernoulli, gaussian) for grey values.", GreyBernoulliWarning,
            stacklevel=2)


def kl_weight(tc, epoch: int, step: int, n_batches: int) -> float:
    """beta, reached linearly over the first ``kl_warmup`` epochs (epoch counts from 1)."""
    if tc.kl_warmup == 0:
        return tc.beta
    return tc.beta * min(1.0, ((epoch - 1) * n_batches + step + 1) / (tc.kl_warmup * n_batches))


def resolve(cfg: Config, data: Data) -> Config:
    """Replace the "auto" settings by what they mean for this data set, so the saved
    config.toml says exactly what was run."""
    likelihood = cfg.model.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if data.binary else "dgaussian"
    classes = None
    if cfg.train.kl_balance and cfg.model.layers < 2:
        raise ConfigError("kl_balance weighs the layers of a hierarchical model: it needs "
                          "--layers 2 or more")
    if cfg.model.conditional:
        data.require_labels("a conditional model")
        classes = len(data.classes)
    return cfg.override(binarize=data.binarize, likelihood=likelihood,
                        levels=2 if data.binary else data.train.max_value + 1, classes=classes)


def make_optimizer(model: VAE, lr: float) -> torch.optim.Adam:
    try:  # fused Adam: one kernel for all parameters (CUDA, and CPU on recent PyTorch)
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


# ---------------------------------------------------------------------------------------
# One optimisation step
# ---------------------------------------------------------------------------------------
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
                           kl_balance=tc.kl_balance)
        return loss, torch.stack([loss.detach() * x.shape[0], t.elbo.detach().sum(),
                                  t.recon.detach().sum(), t.kl.detach().sum()])


def fast_paths(tc: TrainConfig, model: VAE, device: torch.device) -> dict[str, bool]:
    """Which of compile and channels-last a run uses ("auto" resolved for this device)."""
    def pick(value: str, auto: bool) -> bool:
        return value == "yes" or (value == "auto" and auto)

    cuda = device.type == "cuda"
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    compiled = pick(tc.compile, cuda and not hasattr(model, "layer_kl"))
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
                 device: torch.device, world: World, backend: str | Callable = "inductor"):
        self.opt, self.world, self.device = opt, world, device
        paths = fast_paths(tc, model, device)
        self.channels_last = paths["channels_last"]
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        net: nn.Module = Loss(model, tc, device)
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
        try:
            sums = self._gradients(self.net, x, y, beta, share)
        except Exception as e:  # compilation can fail (no compiler, an unsupported GPU)
            if self.net is self.eager:
                raise
            why = " ".join([line.strip() for line in str(e).splitlines() if line.strip()][:2])
            log.warning("the compiled training step failed (%s: %s); training eagerly from "
                        "here on (--compile no skips the attempt)", type(e).__name__, why)
            self.net = self.eager
            sums = self._gradients(self.net, x, y, beta, share)
        self.opt.step()
        return sums

    def _empty_share(self, x: Tensor, y: Tensor | None, beta: float, n_global: int) -> Tensor:
        """Take part in the gradients' all-reduce with one zero-weighted dummy example that
        draws the global batch's random numbers like every other rank (so the random
        streams of all ranks stay in step)."""
        dummy = torch.zeros(1, *x.shape[1:], device=x.device)
        y1 = None if y is None else torch.zeros(1, dtype=y.dtype, device=y.device)
        with noise_shard(0, 1, n_global):
            self._gradients(self.eager, dummy, y1, beta, 0.0)
        self.opt.step()
        return torch.zeros(4, device=self.device)

    def _gradients(self, net, x: Tensor, y: Tensor | None, beta: float, share: float) -> Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss, sums = net(x, y, torch.tensor(beta, device=self.device))
        (loss * share if share != 1 else loss).backward()
        return sums


def selection(tc) -> tuple[str, str]:
    """(metrics key, words) of the validation number the best checkpoint is chosen on: the
    objective the run trains, with beta = 1."""
    if tc.autoencoder:
        return "val_recon", "validation reconstruction log p(x|z=E_q[z|x])"
    if tc.objective == "iwae":
        return f"val_iwae{tc.samples}", f"validation IWAE bound (k = {tc.samples})"
    return "val_elbo", "validation ELBO"


def best_epoch(history: list[dict], tc) -> dict | None:
    """The metrics of the epoch whose weights are model.safetensors."""
    key = selection(tc)[0]
    rows = [m for m in history if m.get(key) is not None and not math.isnan(m[key])]
    return max(rows, key=lambda m: m[key]) if rows else None


class TensorBoard:
    """Optional TensorBoard log in RUN/tensorboard: per-epoch scalars and a grid of mean
    samples from fixed prior draws."""

    def __init__(self, run_dir: Path, model: VAE):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RunError("--tensorboard needs the tensorboard package: "
                           "pip install 'vaelab[tensorboard]'") from e
        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        with seeded(0, model.device):
            self.z = model.prior().sample((64,)).to(model.device)  # the same codes every epoch

    @torch.no_grad()
    def log(self, m: dict, model: VAE) -> None:
        from .plots import image_grid

        for key, value in m.items():
            group, _, name = key.partition("_")
            if key != "epoch" and value is not None:  # train_elbo -> elbo/train
                tag = f"{name}/{group}" if group in ("train", "val") else key
                self.writer.add_scalar(tag, value, m["epoch"])
        g = image_grid(model.decode(self.z).mean, 8)
        self.writer.add_image("mean samples", g, m["epoch"],
                              dataformats="HW" if g.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    model: VAE
    data: Data
    history: list[dict] = field(default_factory=list)
    stopped: bool = False  # by the time limit, before cfg.train.epochs


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, data: Data | None = None,
          progress: bool = True, tensorboard: bool = False,
          time_limit: float | None = None) -> TrainResult:
    """Maximise the ELBO with Adam. Writes the run directory; ``resume=True`` continues a
    run from its checkpoint (up to ``cfg.train.epochs``); ``tensorboard=True`` also logs
    to RUN/tensorboard. With ``time_limit`` (seconds), stops after the last epoch that
    ends within it (judged by the epochs so far), so that a job with a wall-clock limit
    ends cleanly and ``resume`` goes on from there (``TrainResult.stopped`` is then True).

    Started by ``torchrun`` as one of several processes, each trains on its shard of every
    batch (see :mod:`vaelab.distributed`); rank 0 writes the run directory."""
    run_dir = Path(run_dir)
    tc = cfg.train
    world, device = join(resolve_device(tc.device))
    if resume:
        if not (run_dir / "checkpoint.safetensors").is_file():
            raise RunError(f"cannot resume: {run_dir} has no checkpoint.safetensors")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already exists and is not empty; pass --resume to continue "
                       "that run, or choose another --out")
    world.barrier()  # every rank has checked the directory before rank 0 fills it
    torch.manual_seed(tc.seed)
    data = data if data is not None else load_data(cfg.data, device)
    cfg = resolve(cfg, data)
    model = VAE.from_config(cfg.model, data.image_shape).to(device)
    check_likelihood(model, data)
    if tc.init and not resume:
        weights, _ = read_safetensors(Path(tc.init) / "model.safetensors")
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise RunError(f"--init {tc.init}: its weights do not fit this model's settings "
                           f"(give the same [model] settings as that run): {e}") from None
        log.info("starting from the weights of %s", tc.init)
    opt = make_optimizer(model, tc.lr)
    gen = torch.Generator(device).manual_seed(tc.seed)
    dims = math.prod(data.image_shape)
    labelled = model.classes > 0  # a conditional model trains on (x, y)
    n_train = len(data.train)
    n_batches = math.ceil(n_train / tc.batch_size)

    def weight(epoch: int, step: int) -> float:  # of the KL term; none for an autoencoder
        return 0.0 if tc.autoencoder else kl_weight(tc, epoch, step, n_batches)

    if resume:
        state = restore_checkpoint(run_dir, model, opt, gen)
        history = [m for m in read_metrics(run_dir) if m["epoch"] <= state.epoch]
        log.info("resuming %s after epoch %d", run_dir, state.epoch)
    else:
        state, history = TrainState(), []
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.toml")
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    stepper = Stepper(model, opt, tc, device, world)

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    board = TensorBoard(run_dir, model) if tensorboard and world.main else None
    bar = tqdm(total=n_batches * max(0, tc.epochs - state.epoch), leave=False, unit="batch",
               disable=None if progress and world.main else True)  # the whole run's ETA
    started, first, stopped = time.perf_counter(), state.epoch, False
    with logging_redirect_tqdm():  # epoch lines above the bar, not through it
        for epoch in range(state.epoch + 1, tc.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            sums = torch.zeros(4, device=device)
            bar.set_description(f"epoch {epoch}/{tc.epochs}")
            for step, batch in enumerate(data.train.batches(
                    tc.batch_size, shuffle=True, generator=gen, labels=labelled, world=world)):
                x, y = unpack(batch)
                n_global = min(tc.batch_size, n_train - step * tc.batch_size)
                batch_sums = stepper(x, y, weight(epoch, step), n_global)
                sums += batch_sums
                bar.update()
                if not bar.disable and step % 20 == 0:
                    bar.set_postfix(elbo=f"{batch_sums[1].item() / max(1, x.shape[0]):.2f}",
                                    refresh=False)
            loss_m, elbo_m, recon_m, kl_m = (world.sum(sums) / n_train).tolist()
            seconds = time.perf_counter() - t0
            model.eval()
            iwae_k = tc.samples if tc.objective == "iwae" else 0
            val = elbo_over(model, data.val.batches(tc.eval_batch_size, labels=labelled,
                                                    world=world),
                            sample=not tc.autoencoder, iwae_k=iwae_k, world=world)
            m = {"epoch": epoch, "train_loss": loss_m, "train_elbo": elbo_m, "train_recon": recon_m,
                 "train_kl": kl_m, "val_elbo": val["elbo"], "val_recon": val["recon"],
                 "val_kl": val["kl"],
                 "val_bits_per_dim": bits_per_dim(-val["elbo"], dims, model.likelihood.discrete),
                 "seconds": seconds, "images_per_s": n_train / seconds,
                 **({f"val_iwae{iwae_k}": val["iwae"]} if iwae_k else {})}
            history.append(m)
            # the checkpoint is chosen on the objective it was trained for (beta = 1)
            fallback = recon_m if tc.autoencoder else -loss_m if iwae_k else elbo_m
            score = m[selection(tc)[0]] if val["n"] else fallback
            state.epoch = epoch
            better = score > state.best_val_elbo or state.best_epoch == 0
            if better:
                state.best_val_elbo, state.best_epoch = score, epoch
            if world.main:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(m) + "\n")
                if better:
                    save_weights(run_dir / "model.safetensors", model, epoch=epoch)
                save_checkpoint(run_dir, model, opt, gen, state)
                if board:
                    board.log(m, model)
            world.barrier()  # the epoch's files are written before any rank goes on
            bpd = m["val_bits_per_dim"]
            shown = (f"val ELBO {val['elbo']:.3f} nats"
                     + ("" if bpd is None else f" ({bpd:.4f} bits/dim)")
                     + f"  KL {val['kl']:.2f}") if val["n"] else \
                f"KL {kl_m:.2f} (no validation set)"
            log.info("epoch %d/%d  train ELBO %.3f  %s  %.1fs  %.0f img/s", epoch, tc.epochs,
                     elbo_m, shown, seconds, m["images_per_s"])
            if time_limit is not None and epoch < tc.epochs:
                spent = time.perf_counter() - started
                late = spent + spent / (epoch - first) > time_limit  # one more epoch
                if world.sum(torch.tensor([float(late)], device=device)).item() > 0:
                    stopped = True  # (every rank stops if one would overrun)
                    log.info("time limit: stopping after epoch %d of %d; continue with "
                             "`vaelab train --resume %s`", epoch, tc.epochs, run_dir)
                    break
    bar.close()
    if board:
        board.close()
    if state.epoch == 0:
        raise RunError("no epoch was trained (epochs must be >= 1)")
    if state.best_epoch != state.epoch:
        model, _ = load_run(run_dir, "best", device)
    return TrainResult(run_dir, model.eval(), data, history, stopped)
