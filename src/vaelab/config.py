"""Configuration: one frozen dataclass per concern, TOML in and out, typed overrides.

A run is fully described by a :class:`Config` (``[data]``, ``[model]``, ``[train]``).
Field names are unique across the three sections, so every field is also a command-line
flag (``latent_dim`` -> ``--latent-dim``) and an override (``latent_dim=50``).

Names that pick an implementation (a data set, a likelihood, a net, a prior, an
activation) are looked up in a :class:`Registry`; an unknown one is a :class:`ConfigError`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from .errors import ConfigError
from .files import atomic_write  # replaces a link, never writes through it
from .values import coerce, read_toml


BINARIZE_MODES = ("auto", "none", "dynamic", "static")
SWITCHES = ("auto", "no", "yes")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "auto")
OBJECTIVES = ("elbo", "iwae")
IWAE_GRADIENTS = ("reparam", "dreg")
SELECTS = ("elbo", "nll")
DEFAULT_KL_WARMUP = 10
DEFAULT_TAIL = 6  # the IWAE tail's default: a sixth of the epochs
# the training settings that leave the ELBO a bound on log p(x) as it stands
BOUND = {"beta": 1, "kl_warmup": 0, "free_bits": 0, "kl_balance": False, "autoencoder": False}
LR_SCHEDULES = ("constant", "cosine", "iwae", "plateau")


def _help(text: str, **kw: Any) -> dict:
    return {"help": text, **kw}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field(default="digits", metadata=_help("data set name (see `vaelab datasets`)"))
    data_dir: str | None = field(default=None, metadata=_help(
        "directory holding the data files (for `folder`: the image directory)"))
    binarize: str = field(default="auto", metadata=_help(
        "auto: the data set's protocol (dynamic for the MNIST-likes, none otherwise); "
        "none: grey values in [0,1]; dynamic: fresh Bernoulli draw of the training set every "
        "epoch (validation/test drawn once, fixed seed); static: one fixed draw of every split",
        choices=BINARIZE_MODES))
    binarize_seed: int = field(default=0, metadata=_help(
        "seed of the one-off binarization of held-out (and, under static, all) images"))
    val_size: int | None = field(default=None, metadata=_help(
        "validation images split off the training set (default: 10000 for the MNIST-likes, "
        "10%% otherwise)"))
    split_seed: int = field(default=0, metadata=_help("seed of the train/validation split"))
    image_size: int | None = field(default=None, metadata=_help("folder: resize to this square"))
    channels: int = field(default=1, metadata=_help("folder: 1 = grey, 3 = RGB", choices=(1, 3)))
    download: bool = field(default=True, metadata=_help("download missing (Fashion-)MNIST files"))
    stream: str = field(default="auto", metadata=_help(
        "no: hold the data on the training device; yes: keep it in host memory and stream "
        "chunks of batches to the device; auto: stream on a GPU when the data take more "
        "than a quarter of its free memory", choices=SWITCHES))

    def __post_init__(self) -> None:
        check_choice("binarize", self.binarize, BINARIZE_MODES)
        check_choice("channels", self.channels, (1, 3))
        check_choice("stream", self.stream, SWITCHES)
        if self.val_size is not None and self.val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {self.val_size}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"image_size must be >= 1 (or unset: no resizing), got "
                              f"{self.image_size}")


@dataclass(frozen=True)
class ModelConfig:
    net: str = field(default="mlp", metadata=_help("encoder/decoder network family"))
    latent_dim: int = field(default=16, metadata=_help(
        "dimension of z (of each stochastic layer of a hierarchical model)"))
    layers: int = field(default=1, metadata=_help(
        "stochastic layers; > 1: a hierarchical VAE with top-down inference (MLP cells)"))
    hidden: tuple[int, ...] = field(default=(512, 256), metadata=_help(
        "hidden widths of the encoder MLP, comma separated; the decoder mirrors them"))
    conv_widths: tuple[int, ...] = field(default=(32, 64), metadata=_help(
        "conv net: channels of each stage (each halves the image), comma separated"))
    res_blocks: int = field(default=1, metadata=_help("conv net: residual blocks per stage"))
    dropout: float = field(default=0.0, metadata=_help(
        "MLP nets: dropout probability after each hidden layer of the encoder and decoder "
        "(in training only; a regularizer for small data sets); 0: none"))
    activation: str = field(default="gelu", metadata=_help(
        "hidden activation (gelu: chosen on validation data, docs/quality.md)"))
    likelihood: str = field(default="auto", metadata=_help(
        "decoder distribution p(x|z); auto: bernoulli for binary data, dgaussian for grey"))
    prior: str = field(default="normal", metadata=_help(
        "prior p(z): normal N(0, I); mog, a learned mixture of Gaussians; vamp, the VampPrior "
        "(a mixture of q(z|u_k) over learned pseudo-inputs u_k)"))
    prior_components: int = field(default=100, metadata=_help(
        "components of the mog prior, pseudo-inputs of the vamp prior"))
    logistic_mixtures: int = field(default=5, metadata=_help("dlogistic: components per pixel"))
    min_scale: float = field(default=1e-3, metadata=_help("least sd of a Gaussian head"))
    levels: int | None = field(default=None, metadata=_help(
        "grey levels of the data, for discrete likelihoods (default: from the data)"))
    conditional: bool = field(default=False, metadata=_help(
        "class-conditional VAE: p(x|y,z) and q(z|x,y) take the label y (needs labelled data)"))
    classes: int | None = field(default=None, metadata=_help(
        "number of classes of a conditional model (default: from the data)"))

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden + self.conv_widths):
            raise ConfigError(f"hidden and conv widths must be >= 1, got {self.hidden}, "
                              f"{self.conv_widths}")
        for name in ("res_blocks", "prior_components", "logistic_mixtures", "layers"):
            if getattr(self, name) < (0 if name == "res_blocks" else 1):
                raise ConfigError(f"{name} must be >= {0 if name == 'res_blocks' else 1}, "
                                  f"got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or (self.dropout and (self.net, self.layers) != ("mlp", 1)):
            raise ConfigError(f"dropout must be in [0, 1) and is for one-layer MLP nets, got "
                              f"{self.dropout} with net {self.net}, {self.layers} layer(s)")
        if self.conditional and self.prior == "vamp":
            raise ConfigError("the vamp prior encodes unlabelled pseudo-inputs; it does not go "
                              "with a conditional model (use --prior normal or mog)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=60, metadata=_help("number of passes over the training set"))
    batch_size: int = field(default=64, metadata=_help("training mini-batch size"))
    lr: float = field(default=1e-3, metadata=_help("Adam learning rate (the peak of a schedule)"))
    lr_schedule: str = field(default="constant", metadata=_help(
        "learning rate over training: constant; cosine, annealed from lr to min_lr over the "
        "run's epochs (per step); iwae, the IWAE paper's steps, lr * 10^(-i/7) for 3^i "
        "epochs, i = 0..7 (Burda et al. 2016); plateau, times plateau_factor whenever the "
        "validation bound has not improved for plateau_patience epochs",
        choices=LR_SCHEDULES))
    lr_warmup: float = field(default=0.0, metadata=_help(
        "epochs (fractions allowed) over which the learning rate rises linearly from 0 to its "
        "schedule, per step; 0: none"))
    lr_cooldown: int = field(default=0, metadata=_help(
        "the last lr_cooldown epochs anneal the learning rate from its schedule's value to "
        "min_lr (a half cosine, per step; with a constant rate: warm-up, stable, decay); "
        "0: none"))
    min_lr: float = field(default=0.0, metadata=_help(
        "the final learning rate of the cosine schedule and of lr_cooldown; the floor of the "
        "plateau schedule"))
    plateau_patience: int = field(default=10, metadata=_help(
        "plateau schedule: epochs without a better validation bound before the cut"))
    plateau_factor: float = field(default=0.5, metadata=_help(
        "plateau schedule: the learning rate's factor at each cut"))
    weight_decay: float = field(default=0.0, metadata=_help(
        "decoupled weight decay of the nets' weight matrices (AdamW, Loshchilov & Hutter "
        "2019; biases and the prior's parameters are not decayed); 0: Adam"))
    grad_clip: float = field(default=0.0, metadata=_help(
        "clip the global gradient norm to this value before each step; 0: none"))
    skip_spikes: float = field(default=0.0, metadata=_help(
        "skip the update of a step whose gradient norm (before clipping) is over this many "
        "times the running mean of the steps taken (a batch whose loss explodes); 0: never"))
    ema: float = field(default=0.999, metadata=_help(
        "decay of an exponential moving average of the weights (Polyak averaging): the "
        "average is validated, kept as the best model and checkpointed; 0: none"))
    beta: float = field(default=1.0, metadata=_help(
        "weight of the KL term in the training loss (reported ELBOs always use 1)"))
    kl_warmup: int | None = field(default=None, metadata=_help(
        "epochs over which the KL weight rises linearly from 0 to beta (Sonderby et al. "
        "2016); 0: none; default: 10 for the ELBO (chosen on validation, docs/quality.md), "
        "none for the IWAE bound and the autoencoder, which have no KL weight"))
    samples: int = field(default=1, metadata=_help(
        "samples of z per example: Monte-Carlo samples of the ELBO, or the k of the IWAE "
        "bound"))
    select: str = field(default="nll", metadata=_help(
        "what chooses model.safetensors: elbo (the validation bound of the objective "
        "trained) or nll (an importance-sampled validation log-likelihood, estimated every "
        "select_every epochs and at the last: the number the literature reports)",
        choices=SELECTS))
    select_every: int = field(default=0, metadata=_help(
        "select = nll: epochs between estimates; 0: as often as costs about a tenth of the "
        "training time (from the sizes; the same on a resumed run)"))
    select_k: int = field(default=100, metadata=_help(
        "select = nll: importance samples of the validation estimate"))
    select_images: int = field(default=1000, metadata=_help(
        "select = nll: validation images of the estimate (the first ones, the same each "
        "time, with the same seed)"))
    objective: str = field(default="elbo", metadata=_help(
        "elbo, or iwae: the importance-weighted bound with k = samples (Burda et al. 2016)",
        choices=OBJECTIVES))
    iwae_epochs: int | None = field(default=None, metadata=_help(
        "the last iwae_epochs of the run train on the importance-weighted bound with k = "
        "iwae_k (the ELBO's model fine-tuned in the same run; select = nll); 0: none; "
        "default: a sixth of the epochs for an ELBO run kept on the NLL (chosen on "
        "validation, docs/quality.md), none otherwise"))
    iwae_k: int = field(default=5, metadata=_help("importance samples of the iwae_epochs' bound"))
    iwae_gradient: str = field(default="reparam", metadata=_help(
        "the encoder's gradient of the IWAE bound: reparam, or dreg, doubly reparameterized "
        "(Tucker et al. 2019): the same mean, less noise; one stochastic layer",
        choices=IWAE_GRADIENTS))
    free_bits: float = field(default=0.0, metadata=_help(
        "free bits (Kingma et al. 2016): nats per latent dimension below which its batch-mean "
        "KL is not penalised in training; 0: none"))
    kl_balance: bool = field(default=False, metadata=_help(
        "hierarchical models: while the KL weight is below 1 (warm-up), weigh each layer's KL "
        "by its share of the batch's KL (mean 1 over layers; Vahdat & Kautz 2020, NVAE), so "
        "that layers with little information are not pushed to collapse"))
    autoencoder: bool = field(default=False, metadata=_help(
        "train a deterministic autoencoder with the same nets instead: z = E_q[z|x], loss "
        "-log p(x|z), no KL (the baseline for what codes learn; its ELBO is not a bound "
        "it was trained on)"))
    init: str | None = field(default=None, metadata=_help(
        "start from the best weights of this run directory (fine-tuning, e.g. with another "
        "objective); its model settings must match"))
    seed: int = field(default=0, metadata=_help("seed of initialisation, batches and noise"))
    device: str = field(default="auto", metadata=_help(
        "auto picks cuda, then mps, then cpu", choices=DEVICES))
    eval_batch_size: int = field(default=1000, metadata=_help("batch size for evaluation"))
    precision: str = field(default="auto", metadata=_help(
        "fp32, or bf16: forward/backward under bfloat16 autocast (products in bf16, losses and "
        "weights fp32; validation fp32); auto: bf16 where the model's own step measures 1.1x "
        "faster so (timed at the start where bf16 products are fast: CUDA, a CPU with "
        "AVX512-BF16 or AMX), else fp32; recorded resolved in config.toml", choices=PRECISIONS))
    compile: str = field(default="auto", metadata=_help(
        "compile the training step (forward and backward) with torch.compile (on CUDA as a "
        "CUDA graph). auto: yes for single-layer models on CUDA, and for MLP runs on a CPU "
        "of ~5 TFLOP or more (6 x batch x parameters x steps), which repay it", choices=SWITCHES))
    channels_last: str = field(default="auto", metadata=_help(
        "conv nets: channels-last memory format; auto: yes on CUDA and CPU", choices=SWITCHES))

    @property
    def warmup(self) -> int:
        """kl_warmup, or its default for the objective: the epochs of the KL warm-up."""
        if self.kl_warmup is not None:
            return self.kl_warmup
        return 0 if self.objective == "iwae" or self.autoencoder else DEFAULT_KL_WARMUP

    @property
    def tail(self) -> int:
        """iwae_epochs, or its default: the epochs of the IWAE tail."""
        if self.iwae_epochs is not None:
            return self.iwae_epochs
        return 0 if self._tail_clashes() else self.epochs // DEFAULT_TAIL

    def _tail_clashes(self) -> list[str]:
        """The settings that an IWAE tail does not go with (none: an ELBO run with beta 1,
        no free bits, kept on the NLL)."""
        return [what for what, _ in self._loosened(("autoencoder", "beta", "free_bits"))] + [
            what for what, bad in (
                ("objective = iwae", self.objective == "iwae"),
                (f"select = {self.select} (the ELBO and the IWAE bound do not compare: select = "
                 "nll keeps the weights on the log-likelihood)", self.select != "nll")) if bad]

    def _iwae_clashes(self) -> list[tuple[str, str]]:
        """The settings the IWAE objective does not go with, each with its fix's flag."""
        return self._loosened(("beta", "kl_warmup", "free_bits", "kl_balance", "autoencoder"))

    def _loosened(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """Those of ``names`` set so that the objective is no bound on log p(x) as it
        stands: ("name = value", the flag that sets it back), in the order given."""
        out = []
        for name in names:
            value, flag = getattr(self, name) or 0, "--" + name.replace("_", "-")
            if isinstance(BOUND[name], bool):
                out += [(name, f"no {flag}")] if value else []
            elif value != BOUND[name]:
                out.append((f"{name} = {value:g}", f"{flag} {BOUND[name]:g}"))
        return out

    def at(self, epoch: int) -> "TrainConfig":
        """The settings epoch ``epoch`` (from 1) trains with: the IWAE bound in the last
        ``tail`` epochs of the run, these settings before."""
        if epoch <= self.epochs - self.tail:
            return self
        return replace(self, objective="iwae", samples=self.iwae_k, kl_warmup=0,
                       kl_balance=False, iwae_epochs=0)

    def __post_init__(self) -> None:
        for name, choices in (("device", DEVICES), ("precision", PRECISIONS), ("compile",
                              SWITCHES), ("channels_last", SWITCHES), ("lr_schedule",
                              LR_SCHEDULES), ("objective", OBJECTIVES), ("select", SELECTS),
                              ("iwae_gradient", IWAE_GRADIENTS)):
            check_choice(name, getattr(self, name), choices)
        for name in ("epochs", "batch_size", "samples", "eval_batch_size", "select_k",
                     "select_images", "iwae_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr < self.lr:
            raise ConfigError(f"min_lr must be >= 0 and below lr ({self.lr:g}), got "
                              f"{self.min_lr:g}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"plateau_factor must be between 0 and 1, got "
                              f"{self.plateau_factor:g}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema is a decay in [0, 1) (e.g. 0.999; 0: none), got {self.ema:g}")
        if not (self.skip_spikes == 0 or self.skip_spikes > 1):
            raise ConfigError(f"skip_spikes is a factor > 1 (e.g. 10) or 0, got {self.skip_spikes}")
        for name in ("lr_warmup", "weight_decay", "grad_clip", "plateau_patience", "beta",
                     "kl_warmup", "free_bits", "select_every", "iwae_epochs", "lr_cooldown"):
            if (getattr(self, name) or 0) < 0:
                hint = " (0: automatic)" if name == "select_every" else ""
                raise ConfigError(f"{name} must be >= 0{hint}, got {getattr(self, name)}")
        bad = self._iwae_clashes() if self.objective == "iwae" else []
        if bad:  # (a run's config.toml holds its KL warm-up)
            raise ConfigError(
                "the iwae objective is a bound on log p(x) as it stands: it does not go with "
                f"{', '.join(b for b, _ in bad)}; set {', '.join(f for _, f in bad)}")
        if self.lr_cooldown >= self.epochs:
            raise ConfigError(f"lr_cooldown = {self.lr_cooldown} must be fewer than the run's "
                              f"epochs ({self.epochs}): it anneals the last ones")
        clash = self._tail_clashes() + ([f"epochs = {self.epochs} (the tail is part of the "
                                         "run)"] if (self.iwae_epochs or 0) >= self.epochs else [])
        if self.iwae_epochs and clash:
            raise ConfigError(f"iwae_epochs = {self.iwae_epochs} (an ELBO run's last epochs on "
                              f"the IWAE bound) does not go with {'; '.join(clash)}: change "
                              "those, or set iwae_epochs = 0 (--iwae-epochs 0)")


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---- TOML -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sec in SECTIONS:
            d = dataclasses.asdict(getattr(self, sec))
            out[sec] = {k: list(v) if isinstance(v, tuple) else v
                        for k, v in d.items() if v is not None}
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> None:
        atomic_write(Path(path), self.to_toml().encode())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "Config":
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        parts = {}
        for sec, klass in SECTIONS.items():
            values = d.get(sec, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{sec}] must be a table")
            hints = _field_types(klass)
            bad = set(values) - set(hints)
            if bad:
                raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in [{sec}]; "
                                  f"valid keys: {', '.join(hints)}")
            parts[sec] = klass(**{k: coerce(hints[k], v, k) for k, v in values.items()})
        return cls(**parts)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(read_toml(path), source=str(path))

    # ---- overrides --------------------------------------------------------------------
    def override(self, **values: Any) -> "Config":
        """Return a copy with fields replaced; values may be strings (as from a command line)."""
        sections = {sec: {} for sec in SECTIONS}
        for key, value in values.items():
            sec = FIELD_SECTION.get(key)
            if sec is None:
                raise ConfigError(f"unknown setting {key!r}; valid settings: "
                                  f"{', '.join(sorted(FIELD_SECTION))}")
            sections[sec][key] = coerce(_field_types(SECTIONS[sec])[key], value, key)
        return Config(**{sec: replace(getattr(self, sec), **vals) if vals else getattr(self, sec)
                         for sec, vals in sections.items()})


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """A ConfigError naming the choices unless ``value`` is one of them."""
    if value not in choices:
        raise ConfigError(f"invalid {name} {value!r}; choose one of: "
                          f"{', '.join(map(str, choices))}")


def _field_types(klass: type) -> dict[str, Any]:
    hints = typing.get_type_hints(klass)
    return {f.name: hints[f.name] for f in fields(klass)}


def field_specs() -> list[tuple[str, str, Any, dataclasses.Field]]:
    """(section, name, type, field) for every setting, in declaration order."""
    return [(sec, f.name, _field_types(k)[f.name], f)
            for sec, k in SECTIONS.items() for f in fields(k)]


FIELD_SECTION: dict[str, str] = {name: sec for sec, name, _, _ in field_specs()}
assert len(FIELD_SECTION) == len(field_specs()), "config field names must be unique"
