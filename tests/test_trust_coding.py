"""Compressed files from anywhere: a header that inflates without end, counts that claim
more than the file holds, fields missing, unknown or of the wrong type, names that do not
fit the images, a .gz name that would not get its bytes back, an empty input, and a user's
folder that happens to be named like a temporary. Each through the real command line: a
clear error, nothing written, nothing of the user's removed."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("constriction")

import vaelab  # noqa: E402
from vaelab.coding.compress import CodingSettings, compress, decompress  # noqa: E402
from vaelab.coding.container import MAGIC, pack, pack_v1, read_container  # noqa: E402
from vaelab.config import Config  # noqa: E402
from vaelab.errors import CodingError  # noqa: E402

pytestmark = pytest.mark.slow  # the command line in real processes


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaelab", "-q", *map(str, args),
                           "--no-progress"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("coding") / "run"
    vaelab.train(Config().override(epochs=1, hidden=(32,), latent_dim=3), d, progress=False)
    return d


@pytest.fixture(scope="module")
def images(run):
    model, cfg = vaelab.load_run(run)
    return model, vaelab.load_data(cfg.data).test.stored().numpy()[:20]  # 17 grey levels


@pytest.fixture(scope="module")
def pngs(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs") / "in"
    d.mkdir()
    for i, x in enumerate(images[1]):
        Image.fromarray(x[0]).save(d / f"{i:02d}.png")
    return d


def _recoded(data: bytes, **fields) -> bytes:
    """The file with header fields replaced (None: removed), checksummed anew as an
    attacker could (in the file's own format)."""
    header, body = read_container(data)
    header = {k: v for k, v in {**header, **fields}.items() if v is not None}
    return (pack if header["format"] in (2, 3) else pack_v1)(header, body)


def _checksummed(data: bytes) -> bytes:
    """Format-2 bytes with a valid checksum after them."""
    import hashlib

    return data + hashlib.sha256(data).digest()[:8]


def test_a_header_that_inflates_without_end_is_refused_at_the_limit(images):
    model, x = images
    bomb = zlib.compress(b" " * (256 << 20), 9)  # 256 MB of header in ~250 KB
    blob = MAGIC + len(bomb).to_bytes(4, "little") + bomb  # format 1: the JSON header
    import hashlib

    blob += hashlib.sha256(blob).digest()
    raw = compress(model, x)  # format 2: the meta
    head = bytearray(raw[:4 + 1 + 16])
    head[4] |= 2  # a meta follows the numbers
    numbers = raw[21:-8]
    n = len(numbers) - 4 * read_container(raw)[0]["words"]
    from vaelab.coding.container import _varint

    meta_bomb = _checksummed(bytes(head) + numbers[:n] + _varint(len(bomb)) + bomb)
    for data in (blob, meta_bomb):
        t0 = time.time()
        with pytest.raises(CodingError, match="inflates past"):
            decompress(model, data)
        assert time.time() - t0 < 5


@pytest.mark.parametrize("cap", [1, 10 ** 12])
def test_counts_beyond_the_file_are_refused_before_anything_is_allocated(images, cap):
    model, x = images
    data = compress(model, x)
    data = _recoded(data, count=10 ** 12, schedule={**read_container(data)[0]["schedule"],
                                                     "cap": cap})
    t0 = time.time()
    with pytest.raises(CodingError, match="damaged header: .*images"):
        decompress(model, data)
    assert time.time() - t0 < 5


def _settings(data: bytes, **changes) -> dict:
    return {**read_container(data)[0]["settings"], **changes}


FORMAT2 = [  # (format 3: fields replaced, or bytes changed, and the words of the error)
    (dict(levels=1), "levels 1"),
    (dict(image_shape=[2, 8, 8]), "image shape"),
    (dict(schedule={"direct": 99, "rate": 0, "cap": 1, "exceptions": []}), "batch schedule"),
    (dict(schedule={"direct": 0, "rate": 0, "cap": 1, "exceptions": [19, 25]}),
     "an exception past the last batch"),
    (dict(settings=lambda d: _settings(d, samples=5000)), "samples 5000"),
    (dict(settings=lambda d: _settings(d, direct_bits=12)), "direct grid bits 12"),
    (dict(settings=lambda d: _settings(d, latent_bits=30)), "latent grid of 30 bits"),
    (dict(settings=lambda d: _settings(d, threads=10 ** 6)), "1000000 threads"),
    (lambda d: _checksummed(d[:3] + b"\x09" + d[4:-8]), "format version 9"),
    (lambda d: _checksummed(d[:4] + b"\xff" + d[5:-8]), "name two codes"),
    (lambda d: _checksummed(d[:22]), "ends inside the header"),
    (lambda d: _checksummed(d[:21] + b"\xff" * 11 + d[21:-8]), "past 64 bits"),
]
FORMAT1 = [
    ({"levels": None}, "'levels' is missing"),
    ({"surprise": 1}, "unknown fields"),
    ({"count": "20"}, "'count' is not an integer"),
    ({"batches": [[5, 2], [3, "x"]]}, "batch sizes"),
    ({"made_with": {"torch": 2}}, "made_with"),
    ({"format": 99}, "format version 99"),
]


@pytest.mark.parametrize("change, words", FORMAT2 + FORMAT1)
def test_a_header_with_a_wrong_field_is_a_clear_error(run, images, tmp_path, change, words):
    model, x = images
    if isinstance(change, dict) and (change, words) in FORMAT1:
        data = _recoded(compress(model, x, settings=CodingSettings(samples=1), version=1),
                        **change)
    elif isinstance(change, dict):
        data = compress(model, x)
        data = _recoded(data, **{k: v(data) if callable(v) else v for k, v in change.items()})
    else:
        data = change(compress(model, x))
    (tmp_path / "x.vlz").write_bytes(data)
    r = _cli("decompress", tmp_path / "x.vlz", "--run", run, "--out", tmp_path / "o.npy")
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.npy").exists()


def test_names_that_do_not_fit_the_images_write_nothing(run, pngs, tmp_path):
    assert _cli("compress", run, pngs, "--out", tmp_path / "p.vlz").returncode == 0
    data = (tmp_path / "p.vlz").read_bytes()
    meta = read_container(data)[0]["meta"]
    cases = {"few": {**meta, "names": meta["names"][:3], "modes": meta["modes"][:3]},
             "outside": {**meta, "names": ["../escape.png"] + meta["names"][1:]},
             "twice": {**meta, "names": [meta["names"][0]] * len(meta["names"])}}
    for name, bad in cases.items():
        (tmp_path / f"{name}.vlz").write_bytes(_recoded(data, meta=bad))
        r = _cli("decompress", tmp_path / f"{name}.vlz", "--run", run, "--out",
                 tmp_path / f"out-{name}")
        assert r.returncode == 2 and "restore information" in r.stderr, (name, r.stderr)
        assert "checksum verified" not in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["p.vlz", "few.vlz", "outside.vlz", "twice.vlz"])  # nothing else, no temporaries


def test_a_user_folder_named_like_a_temporary_is_never_removed(run, pngs, tmp_path):
    assert _cli("compress", run, pngs, "--out", tmp_path / "p.vlz").returncode == 0
    mine = tmp_path / "out.part"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    r = _cli("decompress", tmp_path / "p.vlz", "--run", run, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert (mine / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in pngs.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_gz_input_comes_back_as_its_content_and_a_gz_name_is_refused(run, images, tmp_path):
    model, x = images
    idx = b"\0\0\x08\x03" + np.array([len(x), 8, 8], ">u4").tobytes() + x[:, 0].tobytes()
    (tmp_path / "in-idx3-ubyte.gz").write_bytes(gzip.compress(idx))
    assert _cli("compress", run, tmp_path / "in-idx3-ubyte.gz", "--out",
                tmp_path / "g.vlz").returncode == 0
    r = _cli("decompress", tmp_path / "g.vlz", "--run", run, "--out", tmp_path / "back.gz")
    assert r.returncode == 2 and ".gz" in r.stderr and not (tmp_path / "back.gz").exists()
    r = _cli("decompress", tmp_path / "g.vlz", "--run", run, "--out", tmp_path / "back")
    assert r.returncode == 0 and (tmp_path / "back").read_bytes() == idx, r.stderr


def test_an_empty_input_is_a_clear_error(run, tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.uint8))
    r = _cli("compress", run, tmp_path / "empty.npy", "--out", tmp_path / "e.vlz")
    assert r.returncode == 2 and "no images" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "e.vlz").exists()


def test_an_idx_header_that_does_not_fit_the_images_is_refused(run, images, tmp_path):
    model, x = images
    idx = b"\0\0\x08\x03" + np.array([len(x), 8, 8], ">u4").tobytes() + x[:, 0].tobytes()
    (tmp_path / "in-idx3-ubyte").write_bytes(idx)
    assert _cli("compress", run, tmp_path / "in-idx3-ubyte", "--out",
                tmp_path / "i.vlz").returncode == 0
    data = (tmp_path / "i.vlz").read_bytes()
    meta = read_container(data)[0]["meta"]
    import base64

    head = b"\0\0\x08\x03" + np.array([len(x) + 5, 8, 8], ">u4").tobytes()
    (tmp_path / "j.vlz").write_bytes(_recoded(data, meta={
        **meta, "header": base64.b64encode(head).decode()}))
    r = _cli("decompress", tmp_path / "j.vlz", "--run", run, "--out", tmp_path / "o")
    assert r.returncode == 2 and "idx header" in r.stderr and not (tmp_path / "o").exists()
    json.dumps(meta)
