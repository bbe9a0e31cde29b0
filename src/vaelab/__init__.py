"""vaelab: variational autoencoders, from the lecture to the literature's numbers.

    >>> import vaelab
    >>> data = vaelab.load_data(vaelab.DataConfig(dataset="digits"))
    >>> result = vaelab.train(vaelab.Config(), "runs/digits")
    >>> model, cfg = vaelab.load_run("runs/digits")
    >>> g = vaelab.imagine(model, 100)            # z ~ p(z); E[x|z] and x ~ p(x|z)
    >>> vaelab.write_report("runs/digits")        # runs/digits/report/index.html

The package, data flowing one way (each imports only from those before it)::

    config, values, registry, errors, files, noise, devices, objectives   the base
    data/       IDX files, image folders and files, the data sets, splits on the device
    models/     distributions, likelihoods p(x|z), priors p(z), nets, the VAE, hierarchies
    runs/       the run directory, its lock, load_run, export and the Hub
    training/   the loop, one step, schedules, the moving average
    studies/    evaluate, Bayes rule on a grid, imagination, baselines, classifiers
    coding/     bits-back compression and its file format
    app/        the command line, the live explorer, figures and pages

The coder and the faces load when first used (``vaelab.compress``, ``vaelab.write_report``),
so ``import vaelab`` stays light.
"""
from importlib import import_module

from .config import Config, DataConfig, ModelConfig, TrainConfig
from .data.datasets import DATASETS
from .data.idx import read_idx
from .data.splits import Data, Split, load_data
from .errors import CodingError, ConfigError, DataError, RunError
from .models.hierarchical import HierarchicalVAE  # registers the model kind "hierarchical"
from .models.vae import VAE
from .objectives import elbo, iwae_bound, kl_divergence
from .runs.rundir import load_run
from .studies.classifiers import bayes_posterior, class_log_likelihoods
from .studies.evaluate import evaluate
from .studies.sample import imagine, reconstruct
from .training.loop import train

__version__ = "0.1.0"

_LAZY = {"compress": "coding.compress", "decompress": "coding.compress",
         "write_report": "app.report", "write_comparison": "app.report",
         "classify_run": "app.experiments"}

__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "TrainConfig", "DATASETS",
           "Data", "Split", "load_data", "read_idx", "evaluate", "DataError", "VAE",
           "HierarchicalVAE", "elbo", "iwae_bound", "kl_divergence", "imagine", "reconstruct",
           "RunError", "load_run", "train", "bayes_posterior", "class_log_likelihoods",
           "CodingError", *_LAZY, "__version__"]


def __getattr__(name: str):
    """The names of :data:`_LAZY`, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
