import json

import pytest
import torch

from vaelab.config import Config
from vaelab.data.splits import load_data
from vaelab.errors import RunError
from vaelab.runs.records import read_metrics
from vaelab.runs.rundir import load_run
from vaelab.studies.evaluate import evaluate
from vaelab.training.loop import GreyBernoulliWarning, train


def small(**kw) -> Config:
    base = dict(dataset="digits", latent_dim=8, hidden="64", epochs=2, batch_size=64,
                device="cpu")
    base.update(kw)
    return Config().override(**base)


def test_training_on_real_digits_lowers_the_loss(tmp_path):
    cfg = small(epochs=15, binarize="dynamic")
    data = load_data(cfg.data)
    r = train(cfg, tmp_path / "run", data=data, progress=False)
    h = r.history
    assert [m["epoch"] for m in h] == list(range(1, 16))
    assert h[-1]["train_elbo"] > h[0]["train_elbo"] + 5
    assert h[-1]["val_elbo"] > h[0]["val_elbo"] + 5
    assert all(m["val_elbo"] <= 0 and m["val_kl"] >= 0 for m in h)  # discrete data
    assert all(m["images_per_s"] > 0 for m in h)
    ev = evaluate(r.model, data)
    assert ev["n"] == len(data.test) and ev["elbo"] <= 0
    assert ev["elbo"] == pytest.approx(ev["recon"] - ev["kl"], abs=1e-3)
    assert ev["bits_per_dim"] == pytest.approx(-ev["elbo"] / (64 * 0.6931471805599453))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    r = train(small(), tmp_path / "run", progress=False)
    x = r.data.test.batch(slice(0, 32))
    model, cfg = load_run(tmp_path / "run")  # the best checkpoint, as train() returns it
    assert cfg.model.likelihood == "dgaussian" and cfg.data.binarize == "none"  # resolved
    assert cfg.model.levels == 17  # the digits grey levels 0..16
    q1, q2 = r.model.encode(x), model.encode(x)
    assert torch.equal(q1.mean, q2.mean) and torch.equal(q1.stddev, q2.stddev)
    assert torch.equal(r.model.decode(q1.mean).mean, model.decode(q1.mean).mean)
    last, _ = load_run(tmp_path / "run", "last")
    assert last.state_dict().keys() == model.state_dict().keys()


def test_resume_continues_exactly(tmp_path):
    """2 epochs in one go == 1 epoch, stop, resume for the 2nd: same weights, same metrics."""
    train(small(epochs=2, binarize="dynamic"), tmp_path / "full", progress=False)
    train(small(epochs=1, binarize="dynamic"), tmp_path / "part", progress=False)
    cfg = Config.load(tmp_path / "part" / "config.toml").override(epochs=2)
    train(cfg, tmp_path / "part", resume=True, progress=False)
    a, _ = load_run(tmp_path / "full", "last")
    b, _ = load_run(tmp_path / "part", "last")
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    for k in ("train_elbo", "val_elbo", "val_kl"):
        assert [m[k] for m in ma] == [m[k] for m in mb]


def test_time_limit_stops_after_a_whole_epoch_and_resume_goes_on(tmp_path):
    """A limit shorter than one epoch: the first epoch is finished and saved, the run
    stops, and resuming it without a limit reaches the run of 2 uninterrupted epochs."""
    r = train(small(epochs=2, binarize="dynamic"), tmp_path / "cut", progress=False,
              time_limit=1e-3)
    assert r.stopped and [m["epoch"] for m in r.history] == [1]
    assert len(read_metrics(tmp_path / "cut")) == 1
    cfg = Config.load(tmp_path / "cut" / "config.toml")
    assert not train(cfg, tmp_path / "cut", resume=True, progress=False).stopped
    train(small(epochs=2, binarize="dynamic"), tmp_path / "full", progress=False)
    a, _ = load_run(tmp_path / "full", "last")
    b, _ = load_run(tmp_path / "cut", "last")
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    generous = train(small(epochs=2), tmp_path / "long", progress=False, time_limit=3600)
    assert not generous.stopped and len(generous.history) == 2


def test_init_starts_from_another_runs_weights(tmp_path):
    """Fine-tuning: epoch 0 of the new run is the old run's best model, and a model with
    other settings is refused with the reason."""
    first = train(small(epochs=2), tmp_path / "pre", progress=False)
    cfg = small(epochs=1).override(init=str(tmp_path / "pre"), objective="iwae", samples=3,
                                   lr=1e-9)
    tuned = train(cfg, tmp_path / "tuned", progress=False)
    for (n, p), (_, q) in zip(first.model.state_dict().items(),
                              tuned.model.state_dict().items()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=n)  # lr ~ 0: unchanged
    assert "val_iwae3" in read_metrics(tmp_path / "tuned")[0]
    assert 'init = "' in (tmp_path / "tuned" / "config.toml").read_text()
    with pytest.raises(RunError, match="do not fit this model"):
        train(small(epochs=1, latent_dim=3).override(init=str(tmp_path / "pre")),
              tmp_path / "bad", progress=False)


def test_run_directory_errors(tmp_path):
    train(small(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="already exists and is not empty"):
        train(small(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="not a vaelab run directory"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="no checkpoint"):
        train(small(), tmp_path / "nothing", resume=True)
    weights = tmp_path / "run" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RunError, match="corrupt"):
        load_run(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert meta["epoch"] == 1


def test_grey_data_with_bernoulli_warns(tmp_path):
    with pytest.warns(GreyBernoulliWarning, match="not a likelihood"):
        train(small(epochs=1, binarize="none", likelihood="bernoulli"), tmp_path / "r",
              progress=False)


def test_kl_warmup_rises_linearly_to_beta():
    from vaelab.training.loop import kl_weight

    tc = small(kl_warmup=2, beta=0.5).train
    n = 10
    weights = [kl_weight(tc, e, s, n) for e in (1, 2, 3) for s in range(n)]
    assert weights[0] == pytest.approx(0.5 / 20) and weights[9] == pytest.approx(0.25)
    assert weights[19] == pytest.approx(0.5) and set(weights[20:]) == {0.5}
    assert all(a < b for a, b in zip(weights[:19], weights[1:20]))
    assert kl_weight(small(kl_warmup=0).train, 1, 0, n) == 1.0
