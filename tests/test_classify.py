"""Generative vs discriminative classifiers: Bayes rule against closed forms, the nested
subsets, the scores, and the whole experiment on real digits."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from test_objectives import LinearGaussian, softplus_inv
from vaelab.app.cli import main
from vaelab.config import Config, DataConfig, ModelConfig
from vaelab.data.splits import load_data
from vaelab.models.likelihoods import GaussianLikelihood
from vaelab.models.nets import Labelled
from vaelab.models.priors import StandardNormalPrior
from vaelab.models.vae import VAE
from vaelab.studies.classifiers import (CLASSIFIERS, Classifier, Task, bayes_posterior,
                                        budget_epochs, class_log_likelihoods, class_prior,
                                        nested_subsets, scores)
from vaelab.studies.classify import run_classifiers


class ConditionalLinearGaussian(LinearGaussian):
    """Class y shifts the mean: z ~ N(0, I), x | y, z ~ N(W z + b_y, sigma^2 I), so
    p(x|y) = N(b_y, C) with C = W W^T + sigma^2 I, and the encoder can hold the exact
    posterior N(A (x - b_y), ...). Bayes rule with a shared C is linear in x (LDA)."""

    def __init__(self, K=3, **kw):
        super().__init__(**kw)
        g = torch.Generator().manual_seed(7)
        self.K = K
        self.B = 1.5 * torch.randn(K, self.D, generator=g, dtype=torch.float64)  # b_y rows
        self.C = self.marginal.covariance_matrix

    def vae(self) -> VAE:
        D, L, K = self.D, self.L, self.K
        min_scale = 1e-3
        enc, dec = nn.Linear(D + K, 2 * L).double(), nn.Linear(L + K, 2 * D).double()
        with torch.no_grad():
            for m in (enc, dec):
                m.weight.zero_()
                m.bias.zero_()
            enc.weight[:L, :D] = self.A
            enc.weight[:L, D:] = -self.A @ self.B.T  # mean A (x - b_y)
            enc.bias[L:] = softplus_inv(self.post_scale - min_scale)
            dec.weight[:D, :L] = self.W
            dec.weight[:D, L:] = self.B.T  # mean W z + b_y
            dec.bias[D:] = softplus_inv(self.sigma - min_scale)
        cfg = ModelConfig(latent_dim=L, likelihood="gaussian", min_scale=min_scale)
        return VAE(Labelled(nn.Flatten(-3), enc, nn.Identity(), K),
                   Labelled(nn.Identity(), dec, nn.Unflatten(-1, (2, 1, D)), K),
                   GaussianLikelihood(cfg), StandardNormalPrior(cfg).double(), L, (1, 1, D),
                   min_scale, classes=K)

    def sample(self, n, seed=3):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(self.K, (n,), generator=g)
        x = self.B[y] + torch.randn(n, self.D, generator=g, dtype=torch.float64) @ \
            torch.linalg.cholesky(self.C).T
        return x.view(n, 1, 1, self.D), y


def test_conditional_vae_classifier_is_bayes_rule_on_known_class_densities():
    toy = ConditionalLinearGaussian()
    model = toy.vae()
    x, _ = toy.sample(40)
    log_lik = class_log_likelihoods(model, x, k=8, batch_size=16)  # (N, K)
    exact = torch.stack([MultivariateNormal(b, toy.C).log_prob(x.view(40, -1)) for b in toy.B], 1)
    torch.testing.assert_close(log_lik.double(), exact, rtol=1e-4, atol=1e-3)

    log_prior = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).log()
    post = bayes_posterior(log_lik, log_prior)
    torch.testing.assert_close(post.exp().sum(1), torch.ones(40, dtype=torch.float64))
    # closed form with a shared covariance: p(y|x) = softmax(w_y . x + c_y)
    P = torch.linalg.inv(toy.C)
    w = toy.B @ P  # (K, D)
    c = -0.5 * ((toy.B @ P) * toy.B).sum(1) + log_prior
    lda = torch.log_softmax(x.view(40, -1) @ w.T + c, 1)
    torch.testing.assert_close(post, lda, rtol=1e-4, atol=1e-3)


def test_class_prior_and_scores_by_hand():
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    torch.testing.assert_close(class_prior(y, 4).exp(),
                               torch.tensor([3, 2, 4, 1], dtype=torch.float64) / 10)
    # 10 predictions at confidence 0.8 of which 8 are right: calibrated, ECE 0
    p = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2)
    s = scores(p.log(), labels)
    assert s["accuracy"] == pytest.approx(0.8)
    assert s["ece"] == pytest.approx(0.0, abs=1e-12)
    assert s["log_loss"] == pytest.approx(-(8 * math.log(0.8) + 2 * math.log(0.2)) / 10)
    # all at confidence 0.9 with 60% right: ECE = |0.6 - 0.9|
    s = scores(torch.tensor([[0.9, 0.1]] * 5, dtype=torch.float64).log(),
               torch.tensor([0, 0, 0, 1, 1]))
    assert s["ece"] == pytest.approx(0.3)
    assert scores(p.log(), labels, probabilistic=False)["log_loss"] is None


def test_subsets_are_nested_seeded_and_class_balanced():
    y = torch.arange(10).repeat_interleave(torch.tensor([30, 50, 20, 40, 60, 35, 45, 25, 55, 40]))
    sizes = [10, 30, 100, 200, len(y)]
    a, b = nested_subsets(y, sizes, seed=1), nested_subsets(y, sizes, seed=1)
    for small, big in zip(sizes, sizes[1:]):
        assert torch.equal(a[big][:small], a[small])  # nested
    assert all(torch.equal(a[n], b[n]) for n in sizes)  # same seed, same subsets
    assert not torch.equal(nested_subsets(y, [100], seed=2)[100], a[100])
    for n in (10, 30, 100, 200):
        counts = torch.bincount(y[a[n]], minlength=10)
        assert counts.max() - counts.min() <= 1  # every class, as evenly as the data allow
    assert sorted(a[len(y)].tolist()) == list(range(len(y)))


def test_every_classifier_gets_the_same_subsets(monkeypatch, tmp_path):
    data = load_data(DataConfig(dataset="digits"))
    seen = {}

    def spy(name):
        def fit(task, idx):
            seen.setdefault(name, []).append(idx.clone())
            return torch.full((len(task.data.test), 10), -math.log(10), dtype=torch.float64)
        return fit

    for name in ("spy-a", "spy-b"):
        monkeypatch.setitem(CLASSIFIERS._items, name, Classifier("discriminative", spy(name)))
    task = Task(data, Config(), tmp_path)
    rows = run_classifiers(task, ["spy-a", "spy-b"], [50, 200, 10 ** 9])
    assert [len(i) for i in seen["spy-a"]] == [50, 200, len(data.train)]
    assert all(torch.equal(a, b) for a, b in zip(seen["spy-a"], seen["spy-b"]))
    assert {r["n"] for r in rows} == {50, 200, len(data.train)}
    assert all(r["accuracy"] == pytest.approx(
        (data.test.labels == 0).double().mean().item()) for r in rows)  # argmax: class 0


def test_budget_gives_small_subsets_enough_steps():
    assert budget_epochs(100, 128, 20, 1000) == 1000  # one batch per epoch
    assert budget_epochs(50000, 128, 20, 1000) == 20  # 391 batches per epoch
    assert budget_epochs(3000, 128, 20, 1000) == 42  # 24 batches: 1000 steps


# ---- the experiment on real digits ---------------------------------------------------------
@pytest.fixture(scope="module")
def digits_classify(tmp_path_factory):
    run = tmp_path_factory.mktemp("classify") / "run"
    assert main(["-q", "classify", "--out", str(run), "--epochs", "5", "--min-steps", "150",
                 "--sizes", "100,all", "--k", "4", "--no-progress", "--json"]) == 0
    return run


@pytest.mark.slow
def test_classify_writes_table_curve_and_features(digits_classify):
    run = digits_classify
    r = json.loads((run / "classify.json").read_text())["test"]
    names = {row["model"] for row in r["rows"]}
    assert names == set(CLASSIFIERS.names())
    assert {row["n"] for row in r["rows"]} == {100, r["n_train"]}
    curve = json.loads((run / "classify" / "efficiency.json").read_text())
    assert curve["rows"] == r["rows"]
    for fig in ("efficiency.png", "features.png"):
        assert (run / "classify" / fig).read_bytes().startswith(b"\x89PNG")
    assert (run / "classify" / "autoencoder" / "model.safetensors").is_file()
    acc = {row["model"]: row["accuracy"] for row in r["rows"] if row["n"] == r["n_train"]}
    # the probe on the VAE's codes, and the generative classifier, beat chance (0.1) widely
    assert acc["logistic regression on VAE codes"] > 0.7
    assert acc["conditional VAE"] > 0.7
    for row in r["rows"]:
        assert 0 <= row["ece"] <= 1 and row["seconds"] > 0
        assert row["log_loss"] is None or row["log_loss"] > 0


@pytest.mark.slow
def test_classify_shows_in_the_report(digits_classify):
    assert main(["-q", "report", str(digits_classify)]) == 0
    page = (digits_classify / "report" / "index.html").read_text()
    row = json.loads((digits_classify / "classify.json").read_text())["test"]["rows"][-1]
    assert f"{row['accuracy']:.4f}" in page and "Not measured yet: <code>vaelab classify" \
        not in page


@pytest.mark.slow
def test_conditional_run_samples_one_row_per_class(tmp_path):
    out = tmp_path / "cvae"
    assert main(["-q", "train", "--conditional", "--epochs", "2", "--hidden", "64",
                 "--out", str(out), "--no-progress"]) == 0
    assert "classes = 10" in (out / "config.toml").read_text()
    from vaelab.runs.rundir import load_run

    model, _ = load_run(out)
    z = torch.zeros(10, model.latent_dim)
    means = model.decode(z, torch.arange(10)).mean  # one z, ten labels: ten images
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1).min() > 0
    with pytest.raises(ValueError, match="class-conditional"):
        model.encode(torch.zeros(1, 1, 8, 8))
    assert main(["-q", "evaluate", str(out), "--k", "4", "--json"]) == 0
    assert main(["-q", "report", str(out)]) == 0  # no interpolations for a conditional model
    assert not (out / "report" / "interpolations.png").exists()
    assert main(["classify", "--run", str(out)]) == 2  # probes need an unconditional VAE


def test_autoencoder_trains_on_the_posterior_mean(tmp_path):
    from vaelab.objectives import elbo

    model = VAE.from_config(ModelConfig(latent_dim=3, hidden=(16,), likelihood="bernoulli"),
                            (1, 8, 8))
    x = torch.rand(5, 1, 8, 8).bernoulli()
    (l1, t1), (l2, t2) = (elbo(model, x, beta=0.0, sample=False) for _ in range(2))
    torch.testing.assert_close(l1, l2)  # deterministic: no sampled z
    z = model.encode(x).mean
    torch.testing.assert_close(t1.recon, model.decode(z).log_prob(x))


@pytest.mark.parametrize("argv, message", [
    (["classify", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["classify", "--sizes", "100,0"], "--sizes takes positive integers"),
    (["classify", "--models", "svm"], "unknown classifier 'svm'"),
])
def test_classify_bad_input(argv, message, capsys):
    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err


def test_classify_needs_labels(tmp_path, monkeypatch, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):  # images at the top level: no classes
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(images / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["classify", "--dataset", "folder", "--data-dir", str(images)]) == 2
    err = capsys.readouterr().err
    assert "needs labels" in err and "one sub-directory per class" in err
    assert not (tmp_path / "runs").exists()  # refused before any training


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code
