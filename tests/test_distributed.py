"""Training across processes: real torchrun, real gloo process groups on this CPU."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.data.splits import load_data
from vaelab.devices import World
from vaelab.noise import batch_shard as noise_shard, standard_normal, uniform16

pytestmark = pytest.mark.slow  # real processes, servers, browsers, trainings

# dynamic binarization, 2 samples of z, KL warm-up, and a batch (101) that two ranks split
# unevenly (51 + 50): every source of randomness and every weighting is exercised
ARGS = ["--dataset", "digits", "--binarize", "dynamic", "--batch-size", "101", "--samples", "2",
        "--kl-warmup", "2", "--hidden", "64", "--latent-dim", "8", "--device", "cpu",
        "--no-progress"]


def _run(cmd, tmp_path, **env):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _torchrun(args, tmp_path, n=2):
    torchrun = shutil.which("torchrun") or pytest.fail("torchrun is not on PATH")
    return _run([torchrun, "--standalone", f"--nproc-per-node={n}", "-m", "vaelab", *args],
                tmp_path)


def _weights(run):
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items()
            if k.startswith("model.")}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4, msg=k)


def test_two_processes_train_as_one(tmp_path):
    """torchrun with 2 gloo processes = 1 process with the same global batch and seed;
    rank 0 alone writes; a run resumed by 2 processes lands on the same parameters."""
    _run([sys.executable, "-m", "vaelab", "train", *ARGS, "--epochs", "3", "--out", "one"],
         tmp_path)
    r = _torchrun(["train", *ARGS, "--epochs", "3", "--out", "two"], tmp_path)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    _assert_same(one, two)
    assert r.stdout.count("run directory:") == 1  # rank 0 reports, the other stays quiet
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # written once
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[-1])
    m2 = json.loads(lines[-1])
    assert m2["val_elbo"] == pytest.approx(m1["val_elbo"], abs=1e-3)  # summed over ranks
    assert m2["train_elbo"] == pytest.approx(m1["train_elbo"], abs=1e-3)

    # started by one process, resumed by two: the global batch, so the run, is the same
    _run([sys.executable, "-m", "vaelab", "train", *ARGS, "--epochs", "2", "--out", "resumed"],
         tmp_path)
    _torchrun(["train", "--resume", "resumed", "--epochs", "3", "--no-progress"], tmp_path)
    _assert_same(one, _weights(tmp_path / "resumed"))


def test_a_last_batch_smaller_than_the_ranks(tmp_path):
    """1,295 training digits in batches of 647: the last batch holds one image, so one rank
    has nothing; it joins the all-reduce with a zero-weighted dummy and the run still
    equals one process."""
    args = [*ARGS[:ARGS.index("--batch-size")], "--batch-size", "647",
            *ARGS[ARGS.index("--batch-size") + 2:], "--epochs", "2"]
    _run([sys.executable, "-m", "vaelab", "train", *args, "--out", "one"], tmp_path)
    _torchrun(["train", *args, "--out", "two"], tmp_path)
    _assert_same(_weights(tmp_path / "one"), _weights(tmp_path / "two"))


def test_schedule_average_and_clipping_under_torchrun(tmp_path):
    """Cosine schedule with warm-up, AdamW, gradient clipping and the weights' moving
    average: two processes land on the one process's weights and average (every rank
    clips the same all-reduced gradients and keeps the same average)."""
    args = [*ARGS, "--epochs", "2", "--lr-schedule", "cosine", "--lr-warmup", "1",
            "--weight-decay", "1e-3", "--grad-clip", "5", "--ema", "0.9"]
    _run([sys.executable, "-m", "vaelab", "train", *args, "--out", "one"], tmp_path)
    _torchrun(["train", *args, "--out", "two"], tmp_path)
    one = load_file(tmp_path / "one" / "checkpoint.safetensors")
    two = load_file(tmp_path / "two" / "checkpoint.safetensors")
    ema = {k: v for k, v in one.items() if k.startswith("ema.")}
    assert ema and ema.keys() == {k for k in two if k.startswith("ema.")}
    _assert_same(ema, {k: two[k] for k in ema})
    _assert_same(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    m1, m2 = ([json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text()
               .splitlines()] for r in ("one", "two"))
    assert [m["lr"] for m in m1] == pytest.approx([m["lr"] for m in m2])
    assert m2[-1]["clipped"] == pytest.approx(m1[-1]["clipped"])


def test_sharded_evaluation_covers_every_image_once(tmp_path):
    _run([sys.executable, "-m", "vaelab", "train", *ARGS, "--epochs", "1", "--out", "run"],
         tmp_path)
    one = json.loads(_run([sys.executable, "-m", "vaelab", "evaluate", "run", "--k", "64",
                           "--device", "cpu", "--json"], tmp_path).stdout)
    two = json.loads(_torchrun(["evaluate", "run", "--k", "64", "--device", "cpu", "--json"],
                               tmp_path).stdout)
    assert two["n"] == one["n"] == 359
    assert two["elbo"] == pytest.approx(one["elbo"], abs=1e-3)  # the same noise, sharded
    # every image draws its codes from its own stream: the same estimate, not another one
    assert two["nll"] == pytest.approx(one["nll"], abs=1e-3)
    assert two["precision"] == one["precision"] and two["compiled"] == one["compiled"]


def test_world_parts_cover_a_batch_once():
    for n in (0, 1, 5, 101, 128):
        for size in (1, 2, 3, 4):
            parts = [World(r, size).part(n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_sharded_draws_are_the_global_draw():
    torch.manual_seed(3)
    full_n = standard_normal((2, 7, 4), -2, torch.float32, torch.device("cpu"))
    full_u = uniform16((7, 3), 0, torch.device("cpu"))
    pieces_n, pieces_u = [], []
    for r in range(3):
        a, b = World(r, 3).part(7)
        torch.manual_seed(3)
        with noise_shard(a, b, 7):
            pieces_n.append(standard_normal((2, b - a, 4), -2, torch.float32,
                                            torch.device("cpu")))
            pieces_u.append(uniform16((b - a, 3), 0, torch.device("cpu")))
    assert torch.equal(torch.cat(pieces_n, 1), full_n)
    assert torch.equal(torch.cat(pieces_u, 0), full_u)
    with noise_shard(0, 2, 7), pytest.raises(RuntimeError, match="shard holds 2"):
        standard_normal((3, 4), -2, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_streamed_batches_equal_resident_batches(device):
    cfg = vaelab.DataConfig(dataset="digits", binarize="dynamic")
    resident = load_data(cfg, device).train
    streamed = load_data(vaelab.DataConfig(dataset="digits", binarize="dynamic", stream="yes"),
                         device).train
    assert streamed.stream and not resident.stream
    assert streamed.images.device.type == "cpu" and streamed.device.type == device
    streamed.chunk = 3  # several host-to-device chunks, the last one partial
    for world in (World(), World(1, 2)):
        g1 = torch.Generator(device).manual_seed(5)
        g2 = torch.Generator(device).manual_seed(5)
        a = list(resident.batches(100, shuffle=True, generator=g1, labels=True, world=world))
        b = list(streamed.batches(100, shuffle=True, generator=g2, labels=True, world=world))
        assert len(a) == len(b) == 13
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
