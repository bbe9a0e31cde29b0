"""The training loop: ``train`` is ``start`` (data, model, optimizer, or the checkpoint
resumed), then per epoch ``train_epoch`` (one :class:`~.step.Stepper` call per batch),
``validate``, ``record`` (metrics, the best and last checkpoints of the run directory) and
``out_of_time``. The step, from ``train_epoch`` down to the ELBO with its shapes, is drawn
in one place: :mod:`vaelab.training`."""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..data.splits import Data, load_data, resolve
from ..devices import (ThreadFit, World, current_world, fitting_threads, flushing_denormals,
                       join, resolve_device)
from ..errors import RunError
from ..files import atomic_write
from ..models.vae import VAE
from ..noise import seeded
from ..objectives import bf16_estimates, bits_per_dim, elbo_over, log_likelihood, unpack
from ..runs.checkpoint import TrainState, restore_checkpoint, save_checkpoint
from ..runs.lock import RunLock, check_run_dir
from ..runs.records import read_metrics, selection
from ..runs.rundir import (legacy_settings, load_run, model_settings, read_safetensors,
                           save_weights)
from .board import TensorBoard
from .schedule import Schedule, WeightAverage, set_lr
from .step import Stepper, auto_precision, make_optimizer

log = logging.getLogger(__name__)
Tensor = torch.Tensor


class GreyBernoulliWarning(UserWarning):
    """Grey-valued data met a Bernoulli likelihood: the numbers are not log-likelihoods."""


def check_likelihood(model: VAE, data: Data) -> None:
    if model.likelihood.binary and not data.binary:
        warnings.warn(
            f"the {model.likelihood.name} likelihood is meant for binary data, but {data.name} "
            "is grey-valued (binarize=none): its 'log-likelihood' is then a cross-entropy, not "
            "a likelihood of the data. Use --binarize dynamic, or --likelihood dgaussian (or "
            "the densities cbernoulli, gaussian) for grey values.", GreyBernoulliWarning,
            stacklevel=2)


def kl_weight(tc, epoch: int, step: int, n_batches: int) -> float:
    """beta, reached linearly over the first ``tc.warmup`` epochs (epoch counts from 1)."""
    return tc.beta if tc.warmup == 0 else tc.beta * min(
        1.0, ((epoch - 1) * n_batches + step + 1) / (tc.warmup * n_batches))


# ---- The loop ------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    model: VAE
    data: Data
    history: list[dict] = field(default_factory=list)
    stopped: bool = False  # by the time limit, before cfg.train.epochs


@dataclass
class Session:
    """What a training run holds while it runs."""

    cfg: Config
    run_dir: Path
    data: Data
    model: VAE
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the shuffling and binarization stream, checkpointed
    state: TrainState
    history: list[dict]
    world: World
    device: torch.device
    schedule: Schedule
    average: WeightAverage | None  # the weights' moving average, when cfg.train.ema

    @property
    def evaluated(self) -> VAE:
        """The model that is validated and kept: the moving average when there is one."""
        return self.average.model if self.average else self.model

    @property
    def labelled(self) -> bool:  # a conditional model trains on (x, y)
        return self.model.classes > 0

    @property
    def n_batches(self) -> int:
        return batches_per_epoch(self.data, self.cfg.train.batch_size)


def batches_per_epoch(data: Data, batch_size: int) -> int:
    return math.ceil(len(data.train) / batch_size)


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, data: Data | None = None,
          progress: bool = True, tensorboard: bool = False,
          time_limit: float | None = None) -> TrainResult:
    """Maximise the ELBO with Adam. Writes the run directory; ``resume=True`` continues a
    run from its checkpoint (up to ``cfg.train.epochs``); ``tensorboard=True`` also logs
    to RUN/tensorboard. With ``time_limit`` (seconds), stops after the last epoch that
    ends within it (judged by the epochs so far), so that a job with a wall-clock limit
    ends cleanly and ``resume`` goes on from there (``TrainResult.stopped`` is then True).

    Started by ``torchrun`` as one of several processes, each trains on its shard of every
    batch (see :mod:`vaelab.devices`); rank 0 writes the run directory, and holds its
    lock (a second trainer in the same directory is refused).

    A loss that is not finite stops training at once with a :class:`Diverged` error; the
    checkpoint and best weights of the last good epoch stay as they were. The CPU flushes
    denormals to zero on every pool thread (:func:`flushing_denormals`, outside the threads
    fitted to the idle cores, :class:`~vaelab.devices.ThreadFit`, so all are set and reset)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run directory; choose another "
                       f"{'--resume' if resume else '--out'}")
    with RunLock(run_dir) if current_world().main else nullcontext(), flushing_denormals(), \
            fitting_threads(resolve_device(cfg.train.device)) as threads:
        return _train(cfg, run_dir, resume, data, progress, tensorboard, time_limit, threads)


def _train(cfg: Config, run_dir: Path, resume: bool, data: Data | None, progress: bool,
           tensorboard: bool, time_limit: float | None, threads: ThreadFit) -> TrainResult:
    s = start(cfg, run_dir, resume, data)
    tc = s.cfg.train
    stepper = Stepper(s.model, s.opt, tc, s.device, s.world, norm_mean=s.state.norm_mean,
                      steps=s.n_batches * tc.epochs)  # (the whole run: resumed, it steps alike)
    if s.average and stepper.channels_last:
        s.average.model.to(memory_format=torch.channels_last)
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    board = TensorBoard(s.run_dir, s.model) if tensorboard and s.world.main else None
    bar = tqdm(total=s.n_batches * max(0, tc.epochs - s.state.epoch), leave=False, unit="batch",
               disable=None if progress and s.world.main else True)  # the whole run's ETA
    started, first, stopped = time.perf_counter(), s.state.epoch, False
    with logging_redirect_tqdm():  # epoch lines above the bar, not through it
        for epoch in range(s.state.epoch + 1, tc.epochs + 1):
            bar.set_description(f"epoch {epoch}/{tc.epochs}")
            if tc.at(epoch) != tc.at(epoch - 1):
                log.info("epoch %d on: the IWAE bound, k = %d", epoch, tc.iwae_k)
            stepper.use(tc.at(epoch))
            m = train_epoch(s, stepper, epoch, bar)
            stopped = time_limit is not None and epoch < tc.epochs and out_of_time(
                s, time.perf_counter() - started, epoch, epoch - first, time_limit,
                stepper.compile_seconds)
            val, n_val = validate(s, epoch, last=stopped)
            if n_val and not math.isfinite(val["val_elbo"]):
                raise _diverged(s, epoch, None, "the validation ELBO")
            record(s, {**m, **val}, n_val > 0, board)
            if stopped:
                break
            threads.refit()  # other work started or ended meanwhile: the idle cores again
    bar.close()
    if board:
        board.close()
    if s.state.epoch == 0:
        raise RunError("no epoch was trained (epochs must be >= 1)")
    model = s.evaluated
    if s.state.best_epoch != s.state.epoch:
        model, _ = load_run(s.run_dir, "best", s.device)
    return TrainResult(s.run_dir, model.eval(), s.data, s.history, stopped)


def start(cfg: Config, run_dir: Path, resume: bool, data: Data | None) -> Session:
    """Check the run directory, load the data, build the model and optimizer (from the
    checkpoint when resuming, from ``--init`` weights if given), write config.toml and the
    metrics so far."""
    if resume:
        cfg = legacy_settings(cfg, run_dir)
    tc = cfg.train
    world, device = join(resolve_device(tc.device))
    check_run_dir(run_dir, resume, tc.epochs)
    world.barrier()  # every rank has checked the directory before rank 0 fills it
    torch.manual_seed(tc.seed)
    data = data if data is not None else load_data(cfg.data, device)
    cfg = resolve(cfg, data)
    model = VAE.from_config(cfg.model, data.image_shape).to(device)
    check_likelihood(model, data)
    if tc.precision == "auto":  # resolved for this model on this device, timed
        cfg = cfg.override(precision=auto_precision(model, tc, data.train, device, world))
    if tc.init and not resume:
        weights, _ = read_safetensors(Path(tc.init) / "model.safetensors")
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise RunError(f"--init {tc.init}: its weights do not fit this model's settings "
                           f"(give the same [model] settings as that run): {e}") from None
        log.info("starting from the weights of %s", tc.init)
    opt = make_optimizer(model, tc.lr, tc.weight_decay)
    average = WeightAverage(model, tc.ema) if tc.ema else None
    gen = torch.Generator(device).manual_seed(tc.seed)
    if world.main:  # what a killed write left behind (the lock says no one writes now)
        for part in run_dir.glob(".*.part") if run_dir.is_dir() else ():
            if part.is_file() and not part.is_symlink():
                part.unlink(missing_ok=True)
    if resume:
        state = restore_checkpoint(run_dir, model, opt, gen, cfg,
                                   average.model if average else None)
        history = [m for m in read_metrics(run_dir) if m["epoch"] <= state.epoch]
        log.info("resuming %s after epoch %d", run_dir, state.epoch)
    else:
        state, history = TrainState(), []
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.toml")
        atomic_write(run_dir / "metrics.jsonl",
                     "".join(json.dumps(m) + "\n" for m in history).encode())
    schedule = Schedule.restore(tc, batches_per_epoch(data, tc.batch_size), state.schedule,
                                tc.epochs)
    return Session(cfg, run_dir, data, model, opt, gen, state, history, world, device,
                   schedule, average)


class Diverged(RunError):
    """Training produced a loss that is not finite."""


def _diverged(s: Session, epoch: int, step: int | None, what: str) -> Diverged:
    tc = s.cfg.train
    where = f"epoch {epoch}" + (f", batch {step + 1}" if step is not None else "")
    kept = (f"the checkpoint of epoch {s.state.epoch} is kept (`vaelab train --resume "
            f"{s.run_dir}` continues from it, with the same settings)") if s.state.epoch else \
        "no epoch was saved"
    tips = [f"a smaller --lr (now {tc.lr:g})"]
    if not tc.warmup and not tc.autoencoder:
        tips.append("--kl-warmup 10")
    if tc.precision == "bf16":
        tips.append("--precision fp32")
    if not tc.grad_clip:
        tips.append("--grad-clip 200")
    return Diverged(f"training diverged at {where}: {what} is not finite. Nothing of this "
                    f"epoch was written; {kept}. Try {' or '.join(tips)}.")


def train_epoch(s: Session, stepper: Stepper, epoch: int, bar) -> dict:
    """One pass over the training split: the epoch's mean loss, ELBO, reconstruction and KL
    (over every rank's examples), its seconds and images per second."""
    tc, n_train = s.cfg.train.at(epoch), len(s.data.train)
    s.model.train()
    t0 = time.perf_counter()
    sums = torch.zeros(4, device=s.device)
    lr = tc.lr
    for step, batch in enumerate(s.data.train.batches(
            tc.batch_size, shuffle=True, generator=s.gen, labels=s.labelled, world=s.world)):
        x, y = unpack(batch)
        n_global = min(tc.batch_size, n_train - step * tc.batch_size)
        beta = 0.0 if tc.autoencoder else kl_weight(tc, epoch, step, s.n_batches)  # none for an AE
        lr = s.schedule.lr(epoch, step)
        set_lr(s.opt, lr)
        batch_sums = stepper(x, y, beta, n_global)
        if s.average:
            s.average.update((epoch - 1) * s.n_batches + step)
        sums += batch_sums
        if (s.device.type == "cpu" or step % 20 == 0) and \
                not bool(torch.isfinite(batch_sums).all()):  # (a sync: on CUDA every 20th)
            raise _diverged(s, epoch, step, "the training loss")
        bar.update()
        if not bar.disable and step % 20 == 0:
            bar.set_postfix(elbo=f"{batch_sums[1].item() / max(1, x.shape[0]):.2f}",
                            refresh=False)
    loss, elbo_m, recon, kl = (s.world.sum(sums) / n_train).tolist()
    if not all(map(math.isfinite, (loss, elbo_m))):
        raise _diverged(s, epoch, None, "the training loss")
    seconds = time.perf_counter() - t0
    m = {"epoch": epoch, "train_loss": loss, "train_elbo": elbo_m, "train_recon": recon,
         "train_kl": kl, "seconds": seconds, "images_per_s": n_train / seconds, "lr": lr}
    compiling = stepper.take_compiling()
    if compiling:  # what compiling the step took of this epoch's seconds
        m["compile_seconds"] = compiling
    m.update(stepper.take_norms(s.n_batches))  # where the run clips or skips spikes
    s.state.norm_mean = float(stepper.mean_norm)  # (resumed with the checkpoint)
    return m


def select_every(tc, n_train: int, n_val: int) -> int:
    """Epochs between the validation log-likelihood estimates of ``select = "nll"``: the
    setting, or as often as costs about a tenth of training (an estimate is k forward
    passes of each of its images; an epoch, about three per image and sample)."""
    if tc.select_every:
        return tc.select_every
    cost = tc.select_k * min(tc.select_images, n_val)
    return max(1, math.ceil(cost / (0.1 * 3 * n_train * tc.samples)))


def validate(s: Session, epoch: int, last: bool = False) -> tuple[dict, int]:
    """The validation ELBO, its terms and bits/dim (and the IWAE bound the run trains) of
    the weights kept; on the first, every ``select_every``-th and the last epoch (the
    run's, or ``last``, where a time limit stops it) also the importance-sampled
    log-likelihood when ``select = "nll"`` and the trained weights' ELBO beside their
    moving average's; and the number of validation images."""
    tc = s.cfg.train
    now = tc.at(epoch)  # the objective this epoch trained
    iwae_k = now.samples if now.objective == "iwae" else 0

    def bound(model: VAE, k: int) -> dict:  # the same noise each time, and the training's
        model.eval()  # random stream left as it was (whichever epochs validate what)
        with seeded(tc.seed, s.device):
            return elbo_over(model, s.data.val.batches(tc.eval_batch_size,
                                                       labels=s.labelled, world=s.world),
                             sample=not tc.autoencoder, iwae_k=k, world=s.world)

    val = bound(s.evaluated, iwae_k)
    dims = math.prod(s.data.image_shape)
    out = {"val_elbo": val["elbo"], "val_recon": val["recon"], "val_kl": val["kl"],
           "val_bits_per_dim": bits_per_dim(-val["elbo"], dims, s.model.likelihood.discrete),
           **({f"val_iwae{iwae_k}": val["iwae"]} if iwae_k else {})}
    n_val = len(s.data.val)
    estimates = n_val and (last or epoch in (1, tc.epochs - tc.tail, tc.epochs)
                           or epoch % select_every(tc, len(s.data.train), n_val) == 0)
    if tc.select == "nll" and not tc.autoencoder and estimates:
        first = s.data.val.subset(torch.arange(min(tc.select_images, n_val),
                                               device=s.data.val.images.device))
        out["val_log_px"] = log_likelihood(  # the same seed each time
            s.evaluated, first, tc.select_k, seed=tc.seed,
            bf16=bf16_estimates(s.evaluated, s.world)).mean().item()
    if s.average and val["n"] and estimates:  # the weights being trained, beside their
        # average, on the estimates' epochs (every epoch, it doubled the validation's time)
        online = bound(s.model, iwae_k)
        out["val_elbo_online"] = online["elbo"]
        if iwae_k:
            out[f"val_iwae{iwae_k}_online"] = online["iwae"]
    return out, val["n"]


def record(s: Session, m: dict, has_val: bool, board: "TensorBoard | None") -> None:
    """Keep the epoch's metrics; choose the best checkpoint on the objective the run trains
    (beta = 1; the training numbers when there is no validation set); rank 0 writes the
    metrics line, the best weights and the checkpoint."""
    tc, world = s.cfg.train.at(m["epoch"]), s.world
    order = ["epoch", "train_loss", "train_elbo", "train_recon", "train_kl", "val_elbo",
             "val_recon", "val_kl", "val_bits_per_dim", "seconds", "images_per_s"]
    m = {k: m[k] for k in order + [k for k in m if k not in order]}  # the log's column order
    s.history.append(m)
    fallback = m["train_recon"] if tc.autoencoder else \
        -m["train_loss"] if tc.objective == "iwae" else m["train_elbo"]
    bound = m[selection(tc, "elbo")[0]] if has_val else fallback
    score = m.get(selection(tc)[0]) if has_val else fallback  # None between NLL estimates
    state = s.state
    state.epoch = m["epoch"]
    better = score is not None and (score > state.best_val_elbo or state.best_epoch == 0)
    if better:
        state.best_val_elbo, state.best_epoch = score, m["epoch"]
    s.schedule.end_epoch(bound)  # the plateau schedule follows the bound, every epoch
    state.schedule = s.schedule.state()
    if world.main:
        with open(s.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        if better:
            save_weights(s.run_dir / "model.safetensors", s.evaluated, epoch=m["epoch"],
                         model_settings=model_settings(s.cfg))
        save_checkpoint(s.run_dir, s.model, s.opt, s.gen, state,
                        s.average.model if s.average else None,
                        model_settings=model_settings(s.cfg))
        if board:
            board.log(m, s.evaluated)
    world.barrier()  # the epoch's files are written before any rank goes on
    bpd = m["val_bits_per_dim"]
    shown = (f"val ELBO {m['val_elbo']:.3f} nats"
             + ("" if bpd is None else f" ({bpd:.4f} bits/dim)")
             + f"  KL {m['val_kl']:.2f}") if has_val else \
        f"KL {m['train_kl']:.2f} (no validation set)"
    if "val_elbo_online" in m:
        shown += f"  (trained weights {m['val_elbo_online']:.3f})"
    if f"val_iwae{tc.samples}" in m:  # the IWAE bound this epoch trained
        shown += f"  IWAE{tc.samples} {m[f'val_iwae{tc.samples}']:.3f}"
    if "val_log_px" in m:
        shown += f"  val NLL {-m['val_log_px']:.3f} (k={tc.select_k})"
    if m.get("skipped"):  # updates of gradient spikes skipped (skip_spikes)
        shown += f"  {m['skipped'] * s.n_batches:.0f} spike(s) skipped"
    if tc.lr_schedule != "constant" or tc.lr_warmup or tc.lr_cooldown:
        shown += f"  lr {m['lr']:.3g}"
    took = f"{m['seconds']:.1f}s" + (f" ({m['compile_seconds']:.1f} of it compiling)"
                                      if "compile_seconds" in m else "")
    log.info("epoch %d/%d  train ELBO %.3f  %s  %s  %.0f img/s", m["epoch"], tc.epochs,
             m["train_elbo"], shown, took, m["images_per_s"])


def out_of_time(s: Session, spent: float, epoch: int, epochs_done: int,
                time_limit: float, compiling: float = 0.0) -> bool:
    """Whether one more epoch, as long as the mean so far (less the ``compiling``
    seconds, paid once), would end past ``time_limit`` seconds (asked before ``epoch``'s
    validation, so that a run selecting on the NLL estimates it on the epoch it stops at);
    every rank stops if one would overrun."""
    late = spent + (spent - compiling) / epochs_done > time_limit
    if s.world.sum(torch.tensor([float(late)], device=s.device)).item() > 0:
        log.info("time limit: stopping after epoch %d of %d; continue with "
                 "`vaelab train --resume %s`", epoch, s.cfg.train.epochs, s.run_dir)
        return True
    return False
