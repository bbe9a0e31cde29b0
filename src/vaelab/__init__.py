"""vaelab: variational autoencoders, from the lecture to the literature's numbers.

    >>> import vaelab
    >>> data = vaelab.load_data(vaelab.DataConfig(dataset="digits"))
    >>> result = vaelab.train(vaelab.Config(), "runs/digits")
    >>> model, cfg = vaelab.load_run("runs/digits")
    >>> g = vaelab.imagine(model, 100)            # z ~ p(z); E[x|z] and x ~ p(x|z)
    >>> vaelab.write_report("runs/digits")        # runs/digits/report/index.html
"""
from .classifiers import bayes_posterior, class_log_likelihoods
from .classify import classify_run
from .compress import CodingError, compress, decompress
from .config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig
from .data import Data, Split, load_data
from .datasets import DATASETS, read_idx
from .evaluate import evaluate
from .fetch import DataError
from .hierarchical import HierarchicalVAE  # registers the model kind "hierarchical"
from .model import VAE
from .objectives import elbo, iwae_bound, kl_divergence
from .report import write_comparison, write_report
from .sample import imagine, reconstruct
from .rundir import RunError, load_run
from .train import train

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "TrainConfig", "DATASETS",
           "Data", "Split", "load_data", "read_idx", "evaluate", "DataError", "VAE",
           "HierarchicalVAE", "elbo",
           "iwae_bound", "kl_divergence", "imagine", "reconstruct", "RunError", "load_run",
           "train", "bayes_posterior", "class_log_likelihoods", "classify_run", "write_report",
           "write_comparison", "compress", "decompress", "CodingError", "__version__"]
