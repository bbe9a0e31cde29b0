"""`vaelab report` and `vaelab compare`: the pages, their numbers, and a real browser."""
import base64
import json
import re
import shutil

import pytest
import torch

from vaelab.app.cli import main
from vaelab.app.report import FIGURES
from vaelab.errors import RunError
from vaelab.runs.records import read_results, write_result
from vaelab.runs.rundir import load_run
from vaelab.studies.sample import interpolate, prior_quantiles, slerp, traverse


def _train(out, *flags):
    assert main(["-q", "train", "--epochs", "2", "--hidden", "64", "--out", str(out),
                 "--no-progress", *flags]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two digits runs: a 2-D latent (manifold, direct scatter) and an 8-D one (PCA), the
    first with evaluate and baselines recorded."""
    root = tmp_path_factory.mktemp("report")
    two, eight = root / "two", root / "eight"
    _train(two, "--latent-dim", "2")
    _train(eight, "--latent-dim", "8")
    assert main(["-q", "evaluate", str(two), "--k", "20", "--json"]) == 0
    assert main(["-q", "baselines", "--run", str(two), "--json"]) == 0
    for r in (two, eight):
        assert main(["-q", "report", str(r)]) == 0
    return two, eight


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.mark.slow
def test_report_is_self_contained_and_complete(runs):
    two, eight = runs
    for run, latent in ((two, True), (eight, False)):
        page = (run / "report" / "index.html").read_text()
        shown = [k for k in FIGURES if f"<h2>{FIGURES[k][0]}</h2>" in page.replace("&amp;", "&")]
        expected = [k for k in FIGURES if k != "manifold" or latent]
        assert shown == expected
        imgs = _images(page)
        assert len(imgs) == len(expected) and all(i.startswith(b"\x89PNG") for i in imgs)
        assert "http://" not in page and "https://" not in page  # nothing to fetch
        assert {p.name for p in (run / "report").glob("*.png")} == {f"{k}.png" for k in expected}


@pytest.mark.slow
def test_report_tables_hold_the_recorded_numbers(runs):
    two, eight = runs
    page = (two / "report" / "index.html").read_text()
    ev = read_results(two)["evaluate"]["test, k=20, best"]
    assert f"{ev['nll']:.2f}" in page and f"{ev['elbo']:.2f}" in page
    for row in read_results(two)["baselines"]["test"]:
        assert f"{row['nll']:.2f}" in page
    assert f"vaelab classify --run {two}" in page  # not run: named with its command
    page = (eight / "report" / "index.html").read_text()
    assert f"Not measured yet: <code>vaelab evaluate {eight} --k 5000</code>" in page
    assert f"vaelab baselines --run {eight}" in page


@pytest.mark.slow
def test_compare_puts_runs_side_by_side(runs, tmp_path):
    out = tmp_path / "cmp.html"
    assert main(["-q", "compare", *map(str, runs), "--out", str(out)]) == 0
    page = out.read_text()
    assert all(f"<th>{r.name}</th>" in page for r in runs)
    assert page.count('class="cols"') == len(FIGURES)  # manifold: one run has it
    assert len(_images(page)) == 2 * len(FIGURES) - 1 + 1  # and the time-to-quality figure
    assert "<h2>Time to quality</h2>" in page
    assert (tmp_path / "cmp-time-to-quality.png").read_bytes().startswith(b"\x89PNG")
    assert main(["compare", str(runs[0])]) == 2


def test_time_to_quality_draws_each_runs_bound_against_its_minutes(tmp_path):
    from vaelab.app.plots import time_to_quality

    fast = [{"epoch": e, "seconds": 30.0, "val_elbo": -100.0 + e} for e in range(1, 6)]
    slow = [{"epoch": e, "seconds": 60.0, "val_elbo": -100.0 + e / 2} for e in range(1, 6)]
    path = time_to_quality({"fast": fast, "slow": slow}, tmp_path / "t.png")
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[0] > 200


def test_results_keep_other_keys_and_refuse_corrupt_files(tmp_path):
    write_result(tmp_path, "evaluate", "a", {"nll": 1.0})
    write_result(tmp_path, "evaluate", "b", {"nll": 2.0})
    write_result(tmp_path, "evaluate", "a", {"nll": 3.0})
    assert read_results(tmp_path) == {"evaluate": {"a": {"nll": 3.0}, "b": {"nll": 2.0}}}
    (tmp_path / "baselines.json").write_text("{not json")
    with pytest.raises(RunError, match="baselines.json is not valid JSON.*vaelab baselines"):
        read_results(tmp_path)


# ---- the tensors behind the figures ------------------------------------------------------
def test_slerp_ends_at_its_endpoints_and_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    b = b * a.norm(dim=-1, keepdim=True) / b.norm(dim=-1, keepdim=True)  # equal norms
    path = slerp(a, b, torch.linspace(0, 1, 7))  # (7, 5, 64)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=-1), a.norm(dim=-1).expand(7, 5))


def test_prior_quantiles_are_the_priors_marginal_quantiles():
    from vaelab.config import ModelConfig
    from vaelab.models.vae import VAE

    normal = VAE.from_config(ModelConfig(latent_dim=3, likelihood="bernoulli"), (1, 8, 8))
    q = prior_quantiles(normal, 11)
    assert q.shape == (11, 3)
    p = torch.distributions.Normal(0.0, 1.0).cdf(q[:, 1])
    torch.testing.assert_close(p, torch.linspace(0.05, 0.95, 11))
    torch.testing.assert_close(q, -q.flip(0))
    torch.manual_seed(0)  # a mixture: its own marginal, not N(0, 1)
    mog = VAE.from_config(ModelConfig(latent_dim=3, likelihood="bernoulli", prior="mog",
                                      prior_components=4), (1, 8, 8))
    with torch.no_grad():
        mog.prior.loc.mul_(0).add_(5.0)  # every component centred at 5
    q = prior_quantiles(mog, 11)
    with torch.no_grad():
        z = mog.prior().sample((200_000,))
    frac = (z[:, None, :] <= q[None]).float().mean(0)  # (11, 3): the marginal CDF at q
    torch.testing.assert_close(frac, torch.linspace(0.05, 0.95, 11)[:, None].expand(11, 3),
                               atol=0.01, rtol=0)
    assert (q[5] - 5).abs().max() < 0.1


@pytest.mark.slow
def test_interpolations_and_traversals_decode_the_right_codes(runs):
    model, _ = load_run(runs[1])
    x = torch.rand(3, 1, 8, 8)
    path = interpolate(model, x[:2], x[1:], steps=5)  # (2, 5, 1, 8, 8)
    ends = model.decode(model.encode(x).mean).mean
    torch.testing.assert_close(path[:, 0], ends[:2])
    torch.testing.assert_close(path[:, -1], ends[1:])
    rows = traverse(model, x[:1], [3, 0], steps=4)  # (2, 4, 1, 8, 8)
    z = model.encode(x[:1]).mean.repeat(4, 1)
    z[:, 3] = prior_quantiles(model, 4)[:, 3]
    torch.testing.assert_close(rows[0], model.decode(z).mean)


# ---- TensorBoard (optional extra) --------------------------------------------------------
@pytest.mark.slow
def test_tensorboard_logs_the_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path / "tb", "--latent-dim", "4", "--tensorboard")
    ea = EventAccumulator(str(tmp_path / "tb" / "tensorboard")).Reload()
    history = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").open()]
    logged = [e.value for e in ea.Scalars("elbo/val")]
    assert logged == pytest.approx([m["val_elbo"] for m in history], rel=1e-6)
    assert "mean samples" in ea.Tags()["images"]


# ---- a real browser ----------------------------------------------------------------------
IMAGES_JS = "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);"


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 390])  # a desktop and a phone
def test_report_renders_in_chromium(runs, browser, width):
    two, _ = runs
    browser.set_window_size(width, 900)
    browser.get((two / "report" / "index.html").as_uri())
    images = browser.execute_script(IMAGES_JS)
    assert len(images) == len(FIGURES)
    assert all(done and w > 0 for _, done, w in images), images
    text = browser.execute_script("return document.body.innerText;")
    ev = read_results(two)["evaluate"]["test, k=20, best"]
    assert f"{ev['nll']:.2f}" in text and f"{ev['nll_bits_per_dim']:.4f}" in text
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth;")
    assert overflow <= 0  # nothing wider than a phone's screen: wide tables scroll in place


HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def test_hostile_results_are_shown_as_text_not_run(runs, browser, tmp_path):
    """A run directory's JSON reaches the page as text: a script in a recorded result
    neither runs nor breaks the page; a result of the wrong shape is named."""
    two, _ = runs
    run = tmp_path / "hostile"
    shutil.copytree(two, run)
    ev = json.loads((run / "evaluate.json").read_text())
    entry = next(iter(ev.values()))
    entry["warnings"] = [HOSTILE]
    entry["active_units"] = HOSTILE
    ev[HOSTILE] = {**entry, "k": HOSTILE, "elbo": HOSTILE}  # wrong types
    (run / "evaluate.json").write_text(json.dumps(ev))
    (run / "baselines.json").write_text(json.dumps({"test": [{"model": HOSTILE}]}))
    assert main(["-q", "report", str(run)]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "<script>window.pwned" not in page and "baselines.json is malformed" in page
    browser.get((run / "report" / "index.html").as_uri())
    assert browser.execute_script("return window.pwned === undefined;")
    assert "<script>window.pwned = 1</script>" in browser.execute_script(
        "return document.body.innerText;")


def test_a_link_in_the_run_directory_is_replaced_not_written_through(runs, tmp_path):
    two, _ = runs
    run = tmp_path / "linked"
    shutil.copytree(two, run)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "figures" / "samples.png").unlink()
    (run / "figures" / "samples.png").symlink_to(victim)
    assert main(["-q", "sample", str(run)]) == 0
    assert victim.read_text() == "keep me"
    assert not (run / "figures" / "samples.png").is_symlink()
    assert (run / "figures" / "samples.png").read_bytes().startswith(b"\x89PNG")
