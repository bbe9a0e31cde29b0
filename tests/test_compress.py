"""Lossless compression: exact round trips for every likelihood, prior and model kind on
real images, code lengths against the discretized -ELBO, files decoded by another
process, and every damaged, truncated or mismatched file a clear error that writes
nothing."""
from __future__ import annotations

import gzip
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("constriction")

import vaelab  # noqa: E402
from vaelab.app.cli import main  # noqa: E402
from vaelab.coding.compress import CodingSettings, compress, decompress, fingerprint, levels_of
from vaelab.coding.container import read_header
from vaelab.config import Config  # noqa: E402
from vaelab.errors import CodingError, ConfigError

# 8 epochs: after 2, some codes sit out at |z| ~ 3-6 in the prior's tails, where the
# grid's edge bins and the coder's 24-bit probabilities make the stack up to 4 % shorter
# than the ideal lengths (measured over seeds), which the checks below would read as a
# coding error; after 8 the two agree within 0.2 %
SMALL = dict(epochs=8, hidden=(64, 32), latent_dim=4, prior_components=5, seed=0)
KINDS = {  # name: settings; digits have 17 grey levels, "static" makes them binary
    "bernoulli-normal": dict(likelihood="bernoulli", binarize="static"),
    "dgaussian-mog": dict(likelihood="dgaussian", prior="mog"),
    "dlogistic-vamp": dict(likelihood="dlogistic", prior="vamp", logistic_mixtures=3),
    "hierarchical-dgaussian": dict(likelihood="dgaussian", layers=2),
    "hierarchical-bernoulli-vamp": dict(likelihood="bernoulli", binarize="static", layers=2,
                                        prior="vamp"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-runs")
    out = {}
    for name, kw in KINDS.items():
        vaelab.train(Config().override(**SMALL, **kw), root / name, progress=False)
        out[name] = root / name
    return out


def _test_images(run):
    model, cfg = vaelab.load_run(run)
    return model, vaelab.load_data(cfg.data).test.stored().numpy()


@pytest.mark.parametrize("samples", [1, 8])
@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_is_exact_and_costs_the_importance_weighted_bound(runs, kind, samples):
    model, x = _test_images(runs[kind])
    stats: dict = {}
    data = compress(model, x, settings=CodingSettings(batch_size=100, samples=samples),
                    stats=stats)
    np.testing.assert_array_equal(decompress(model, data), x)
    assert stats["code"] == "bits-back" and 0 < stats["direct"] < len(x) / 10
    # the stack ends with the code of every image: its length is the sum of the ideal
    # lengths -log2 (1/K) sum_k p(x|z_k)p(z_k)/q(z_k|x) of the coded particles (the bits
    # pushed, for the first images' direct code), up to the coder's 32-bit words and its
    # 24-bit probabilities
    assert stats["body_bits"] == pytest.approx(stats["ideal_bits"], rel=0.01, abs=64)
    # and the ideal lengths are an unbiased estimate of the K-sample bound (in bits)
    torch.manual_seed(0)
    with torch.no_grad():
        xf = torch.as_tensor(x, dtype=torch.float64) / (levels_of(model) - 1)
        bound = torch.stack([vaelab.iwae_bound(model.double(), xf, samples)
                             for _ in range(8)]).mean(0)
    model.float()
    assert stats["ideal_bits"] == pytest.approx(-bound.sum().item() / math.log(2), rel=0.03)


def test_a_file_of_the_previous_format_still_decodes(runs):
    model, x = _test_images(runs["dgaussian-mog"])
    old = compress(model, x, settings=CodingSettings(samples=1), version=1)
    assert old.startswith(b"\x89VAELAB\n") and read_header(old)["format"] == 1
    np.testing.assert_array_equal(decompress(model, old), x)
    two = compress(model, x, settings=CodingSettings(samples=4), version=2)
    assert two[:4] == b"\x89VL\x02" and "threads" not in read_header(two)["settings"]
    np.testing.assert_array_equal(decompress(model, two), x)


def test_a_file_decodes_at_any_thread_count():
    """MKL splits a product's sums by the thread count: an encoder's 784-wide first layer
    on 64 images gives other float32 bits at 2 threads than at 1, so the particles'
    weights, and with them the code, would differ. A file records the count it was made
    on and is decoded on that count; a format-2 file, which does not, fails safely and
    says what to do."""
    from vaelab.devices import computing_threads
    from vaelab.models.vae import VAE

    torch.manual_seed(0)
    model = VAE.from_config(Config().override(hidden=(64,), latent_dim=4,
                                                  likelihood="bernoulli").model, (1, 28, 28))
    with torch.no_grad():  # (images it codes by bits back: its own samples)
        x = model.decode(model.prior().sample((64,))).sample().to(torch.uint8).numpy()
    settings, stats = CodingSettings(samples=8, weights="fp32"), {}
    with computing_threads(2):
        data = compress(model, x, settings=settings, stats=stats)
        assert stats["code"] == "bits-back"
        old = compress(model, x, settings=settings, version=2)
        np.testing.assert_array_equal(decompress(model, old), x)
    assert read_header(data)["settings"]["threads"] == 2
    with torch.no_grad():  # whether this machine's library splits these sums by threads
        q = [None, None]
        for n in (1, 2):
            with computing_threads(n):
                q[n - 1] = model.encode(torch.from_numpy(x).float()).mean
        split = not torch.equal(*q)
    with computing_threads(1):
        np.testing.assert_array_equal(decompress(model, data), x)
        assert torch.get_num_threads() == 1
        if split:  # (an AMX Xeon's MKL; this AMD EPYC's gave the same bits on 1 and 2)
            with pytest.raises(CodingError, match="does not record the thread count"):
                decompress(model, old)
        else:
            np.testing.assert_array_equal(decompress(model, old), x)


def test_the_file_of_one_image_has_a_small_fixed_header(runs):
    model, x = _test_images(runs["bernoulli-normal"])
    stats: dict = {}
    data = compress(model, x[:1], stats=stats)
    assert stats["header_bytes"] <= 48 and stats["direct"] == 1
    np.testing.assert_array_equal(decompress(model, data), x[:1])
    verbose = compress(model, x[:1], verbose_header=True)
    assert "torch" in read_header(verbose)["made_with"]
    np.testing.assert_array_equal(decompress(model, verbose), x[:1])


def test_an_image_is_never_larger_than_its_png(runs):
    """Stripes: no digit, a poor fit for the model, but a few bytes of PNG; the file takes
    the PNG's image data (without its 57 bytes of chunks) and stays below the PNG."""
    import io

    from PIL import Image

    model, _ = _test_images(runs["dgaussian-mog"])
    stripes = np.zeros((1, 1, 8, 8), np.uint8)
    stripes[..., ::2, :] = 16
    png = io.BytesIO()
    Image.fromarray(stripes[0, 0]).save(png, "PNG", optimize=True)
    stats: dict = {}
    data = compress(model, stripes, stats=stats)
    assert stats["code"] == "png" and len(data) < len(png.getvalue())
    np.testing.assert_array_equal(decompress(model, data), stripes)


def test_images_the_model_codes_worse_than_plain_pixels_get_the_uniform_code(runs):
    model, x = _test_images(runs["dgaussian-mog"])
    noise = np.random.default_rng(0).integers(0, 17, (80, *x.shape[1:]), dtype=np.uint8)
    stats: dict = {}
    data = compress(model, noise, stats=stats)
    assert stats["code"] == "uniform"
    assert 8 * (len(data) - stats["header_bytes"]) <= noise.size * math.log2(17) + 64
    np.testing.assert_array_equal(decompress(model, data), noise)


def test_coupled_rgb_logistic_mixture_round_trip(tmp_path):
    """Colour images: channel c of a pixel is coded given channels < c, as PixelCNN++'s
    log_prob defines it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images[:120] / 16  # (N, 8, 8) real digits, coloured per image
    rng = np.random.default_rng(0)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i, d in enumerate(digits):
        tint = rng.uniform(0.3, 1.0, 3)
        rgb = (255 * d[..., None] * tint).round().astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(folder / f"{i:03d}.png")
    run = tmp_path / "run"
    vaelab.train(Config().override(dataset="folder", data_dir=str(folder), channels=3,
                                   image_size=8, likelihood="dlogistic", logistic_mixtures=2,
                                   **SMALL), run, progress=False)
    out = tmp_path / "back"
    assert main(["-q", "compress", str(run), str(folder), "--out", str(tmp_path / "c.vlz"),
                 "--no-progress"]) == 0
    assert main(["-q", "decompress", str(tmp_path / "c.vlz"), "--run", str(run), "--out",
                 str(out), "--no-progress"]) == 0
    for p in sorted(folder.iterdir()):
        with Image.open(p) as a, Image.open(out / p.name) as b:
            assert a.mode == b.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def grey_files(runs, tmp_path_factory):
    """The digits' test images as a raw IDX file, a gzipped one, .npy files in two layouts
    and a folder of PNGs."""
    from PIL import Image

    _, x = _test_images(runs["dgaussian-mog"])
    root = tmp_path_factory.mktemp("files")
    idx = b"\0\0\x08\x03" + np.array(x.shape[:1] + x.shape[2:], ">u4").tobytes() + \
        x[:, 0].tobytes()
    (root / "images-idx3-ubyte").write_bytes(idx)
    (root / "images-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    np.save(root / "hw.npy", x[:, 0])
    np.save(root / "hwc.npy", x.transpose(0, 2, 3, 1))
    (root / "pngs" / "sub").mkdir(parents=True)
    for i, img in enumerate(x[:40]):
        Image.fromarray(img[0]).save(root / "pngs" / ("sub" if i % 2 else "") / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["images-idx3-ubyte", "hw.npy", "hwc.npy"])
def test_files_come_back_byte_for_byte_through_another_process(runs, grey_files, tmp_path,
                                                               name):
    run, src = runs["dgaussian-mog"], grey_files / name
    packed, back = tmp_path / "x.vlz", tmp_path / ("back" + src.suffix)
    assert main(["-q", "compress", str(run), str(src), "--out", str(packed),
                 "--no-progress"]) == 0
    r = subprocess.run([sys.executable, "-m", "vaelab", "-q", "decompress", str(packed),
                        "--run", str(run), "--out", str(back), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()
    assert packed.stat().st_size < src.stat().st_size / 2


def test_a_gzipped_idx_file_gives_back_its_content(runs, grey_files, tmp_path):
    run = runs["dgaussian-mog"]
    assert main(["-q", "compress", str(run), str(grey_files / "images-idx3-ubyte.gz"),
                 "--out", str(tmp_path / "x.vlz"), "--no-progress"]) == 0
    assert main(["-q", "decompress", str(tmp_path / "x.vlz"), "--run", str(run), "--out",
                 str(tmp_path / "back"), "--no-progress"]) == 0
    assert (tmp_path / "back").read_bytes() == (grey_files / "images-idx3-ubyte").read_bytes()


def test_a_folder_of_pngs_comes_back_with_its_names_and_pixels(runs, grey_files, tmp_path):
    from PIL import Image

    run, src = runs["dgaussian-mog"], grey_files / "pngs"
    assert main(["-q", "compress", str(run), str(src), "--out", str(tmp_path / "p.vlz"),
                 "--no-progress"]) == 0
    assert main(["-q", "decompress", str(tmp_path / "p.vlz"), "--run", str(run), "--out",
                 str(tmp_path / "back"), "--no-progress"]) == 0
    names = sorted(p.relative_to(src) for p in src.rglob("*.png"))
    assert names == sorted(p.relative_to(tmp_path / "back")
                           for p in (tmp_path / "back").rglob("*.png"))
    for n in names:
        with Image.open(src / n) as a, Image.open(tmp_path / "back" / n) as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_binary_images_stored_as_0_and_255_are_coded_by_a_bernoulli_model(runs, tmp_path):
    model, x = _test_images(runs["bernoulli-normal"])
    np.save(tmp_path / "b.npy", x[:, 0] * 255)
    run = runs["bernoulli-normal"]
    assert main(["-q", "compress", str(run), str(tmp_path / "b.npy"), "--out",
                 str(tmp_path / "b.vlz"), "--no-progress"]) == 0
    assert main(["-q", "decompress", str(tmp_path / "b.vlz"), "--run", str(run), "--out",
                 str(tmp_path / "back.npy"), "--no-progress"]) == 0
    assert (tmp_path / "back.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def test_the_runs_own_test_split(runs, tmp_path, capsys):
    run = runs["bernoulli-normal"]
    assert main(["-q", "compress", str(run), "--split", "test", "--out",
                 str(tmp_path / "t.vlz"), "--no-progress"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    assert main(["-q", "decompress", str(tmp_path / "t.vlz"), "--run", str(run), "--out",
                 str(tmp_path / "t.npy"), "--no-progress"]) == 0
    _, x = _test_images(run)
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), x)
    assert read_header((tmp_path / "t.vlz").read_bytes())["meta"]["split"] == "test"


# ---- damaged, truncated, mismatched: a clear error, nothing written ---------------------
@pytest.fixture(scope="module")
def packed(runs):
    model, x = _test_images(runs["dgaussian-mog"])
    return compress(model, x[:50])


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-100], "damaged or truncated"),
    (lambda d: d[:20], "damaged or truncated"),
    (lambda d: _flip(d, len(d) // 2), "damaged or truncated"),
    (lambda d: _flip(d, 1), "not a vaelab compressed file"),
    (lambda d: d[:3] + b"\x09" + d[4:], "format version 9"),
    (lambda d: b"", "not a vaelab compressed file"),
])
def test_damaged_files_are_refused(runs, packed, damage, message):
    model, _ = vaelab.load_run(runs["dgaussian-mog"])
    with pytest.raises(CodingError, match=message):
        decompress(model, damage(packed))


def test_another_model_is_refused_and_the_cli_writes_nothing(runs, packed, tmp_path, capsys):
    other = runs["hierarchical-dgaussian"]
    (tmp_path / "x.vlz").write_bytes(packed)
    out = tmp_path / "never.npy"
    assert main(["-q", "decompress", str(tmp_path / "x.vlz"), "--run", str(other), "--out",
                 str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("never*"))


def test_a_decoder_that_computes_other_probabilities_is_caught_by_the_checksum(runs, packed,
                                                                            monkeypatch):
    """The same weights nudged by one ulp: another build of torch could compute the
    probabilities this differently. The fingerprint is patched to let it through; the
    images' checksum must still refuse a wrong result."""
    model, _ = vaelab.load_run(runs["dgaussian-mog"])
    genuine = fingerprint(model)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
    monkeypatch.setattr(sys.modules["vaelab.coding.compress"], "fingerprint", lambda m: genuine)
    with pytest.raises(CodingError, match="checksum|decoding failed"):
        decompress(model, packed)


@pytest.mark.parametrize("kw, message", [
    (dict(likelihood="cbernoulli"), "density"),
    (dict(likelihood="bernoulli", binarize="static", conditional=True), "label"),
])
def test_models_that_cannot_code_are_refused(tmp_path, kw, message):
    vaelab.train(Config().override(**SMALL, **kw), tmp_path / "r", progress=False)
    model, x = _test_images(tmp_path / "r")
    with pytest.raises(ConfigError, match=message):
        compress(model, x)


def test_images_the_model_cannot_code_are_refused(runs, tmp_path, capsys):
    np.save(tmp_path / "grey.npy", np.full((3, 8, 8), 200, np.uint8))
    np.save(tmp_path / "big.npy", np.zeros((3, 9, 9), np.uint8))
    for name, words in [("grey.npy", "values up to 200"), ("big.npy", "do not fit")]:
        assert main(["-q", "compress", str(runs["bernoulli-normal"]), str(tmp_path / name),
                     "--out", str(tmp_path / "o.vlz"), "--no-progress"]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "o.vlz").exists()


def test_an_existing_output_is_not_overwritten(runs, packed, tmp_path, capsys):
    (tmp_path / "x.vlz").write_bytes(packed)
    (tmp_path / "keep.npy").write_bytes(b"mine")
    assert main(["-q", "decompress", str(tmp_path / "x.vlz"), "--run",
                 str(runs["dgaussian-mog"]), "--out", str(tmp_path / "keep.npy")]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "keep.npy").read_bytes() == b"mine"


def test_random_damage_never_gives_wrong_images(runs, packed):
    """Any byte of the file changed: refused, never decoded into other images."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    model, x = _test_images(runs["dgaussian-mog"])

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(st.integers(0, len(packed) - 1), st.integers(1, 255))
    def check(at, xor):
        bad = packed[:at] + bytes([packed[at] ^ xor]) + packed[at + 1:]
        with pytest.raises(CodingError):
            decompress(model, bad)

    check()


def test_more_samples_code_closer_to_the_exact_log_likelihood(tmp_path):
    """A 2-D latent: -log2 p(x) by numerical integration (Bayes rule on a grid) is the
    floor every code stays above (beyond the chance of a few bits); the encoder's scales
    are cut to a seventh, so that q misses much of the posterior and the ELBO's gap is
    wide: the files order as the bounds do, K = 1 > K = 4 > K = 32 > -log2 p(x)."""
    from vaelab.studies.posterior import posterior_grid

    vaelab.train(Config().override(epochs=15, hidden=(64, 32), latent_dim=2, seed=0,
                                   likelihood="bernoulli", binarize="static"),
                 tmp_path / "r", progress=False)
    model, x = _test_images(tmp_path / "r")
    x = x[:150]
    with torch.no_grad():
        last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias[2:] -= 2.0  # softplus(raw - 2): q much narrower than the posterior
        exact = -sum(g["log_px"] for g in posterior_grid(model.double(), torch.as_tensor(
            x, dtype=torch.float64))) / math.log(2)
    model.float()
    bits = {}
    for k in (1, 4, 32):
        stats: dict = {}
        data = compress(model, x, settings=CodingSettings(samples=k), stats=stats)
        np.testing.assert_array_equal(decompress(model, data), x)
        bits[k] = stats["body_bits"]
    assert bits[1] > bits[4] > bits[32] > exact - 20
    assert bits[1] - exact > 300  # (the gap the samples close: 6592, 6464, 6400 vs 5989)


@pytest.mark.parametrize("kind", ["dgaussian-mog", "hierarchical-bernoulli-vamp"])
def test_independent_particles_round_trip_and_need_more_starting_bits(runs, kind):
    """BB-IS draws each of the K particles from the stack: the same rate as the coupled
    particles, but the stack must hold K draws per image before bits back can start."""
    model, x = _test_images(runs[kind])
    out = {}
    for coupled in (False, True):
        stats: dict = {}
        data = compress(model, x, settings=CodingSettings(samples=16, coupled=coupled),
                        stats=stats)
        np.testing.assert_array_equal(decompress(model, data), x)
        assert read_header(data)["settings"]["coupled"] == int(coupled)
        out[coupled] = stats
    assert out[False]["direct"] > out[True]["direct"]


def test_coupled_particles_are_draws_of_the_posterior():
    """Every particle of the coupled set is Q's quantile at a uniform: its bin holds the
    quantile exactly, and over many uniforms its mean and spread are the posterior's."""
    from vaelab.coding.latents import Grid
    from vaelab.coding.particles import ONE, Coupled

    grid = Grid(2.0 ** -8, 16.0)
    parts = Coupled(grid, None, (8, 2000, 1, 3))
    mean = torch.tensor([[0.3 * 256, -2.0 * 256, 15.9 * 256]], dtype=torch.float64)
    std = torch.tensor([[0.05 * 256, 1.0 * 256, 0.5 * 256]], dtype=torch.float64)
    mean, std = mean.expand(8, 2000, 3), std.expand(8, 2000, 3)
    u = torch.randint(0, ONE, (2000, 3), generator=torch.Generator().manual_seed(0))
    v = (u + parts._offsets(0)) % ONE
    v[0, :3] = torch.tensor([0, ONE - 1, ONE // 2])  # the ends of the range too
    i = parts._quantile(v, mean, std)
    assert ((parts._cdf(i - 1, mean, std) <= v) & (v < parts._cdf(i, mean, std))).all()
    z = i[:, 1:] / 256.0  # (the first image holds the ends)
    np.testing.assert_allclose(z.mean((0, 1))[:2], [0.3, -2.0], atol=0.02)
    np.testing.assert_allclose(z.std((0, 1))[:2], [0.05, 1.0], rtol=0.03)
    assert z[..., 2].max() <= 16.0  # a posterior near the grid's edge stays inside it
