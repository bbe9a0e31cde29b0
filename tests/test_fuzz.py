"""Property-based fuzzing (Hypothesis) of every parser a user's file reaches: a TOML
config, an IDX file, a folder of images, a run directory's metadata, an image file for
compression. Whatever the bytes, the answer is a result or the library's own clear error,
never another exception."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

import vaelab  # noqa: E402
from vaelab.config import Config  # noqa: E402
from vaelab.data.idx import parse_idx  # noqa: E402
from vaelab.errors import ConfigError, DataError, RunError  # noqa: E402

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck))
SLOW = settings(max_examples=40, deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=6)
KEYS = ["dataset", "latent_dim", "hidden", "lr", "epochs", "binarize", "prior", "beta",
        "image_size", "channels", "likelihood", "layers", "nonsense"]


@FAST
@given(st.dictionaries(st.sampled_from(["data", "model", "train", "other"]),
                       st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=4),
                                 scalars), max_size=3))
def test_any_config_table_is_a_config_or_a_config_error(d):
    try:
        cfg = Config.from_dict(d)
    except ConfigError:
        return
    assert Config.from_dict(cfg.to_dict()) == cfg  # what is accepted survives a round trip


@FAST
@given(st.text(max_size=200))
def test_any_toml_text_is_a_config_or_a_config_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("toml") / "c.toml"
    p.write_text(text)
    try:
        Config.load(p)
    except ConfigError:
        pass


def _idx(shape, dtype_code=0x08):
    return b"\0\0" + bytes([dtype_code, len(shape)]) + np.array(shape, ">u4").tobytes()


@FAST
@given(st.one_of(st.binary(max_size=64),
                 st.tuples(st.lists(st.integers(0, 40), min_size=1, max_size=4),
                           st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
                           st.binary(max_size=300))
                 .map(lambda t: _idx(t[0], t[1]) + t[2])))
def test_any_idx_bytes_are_an_array_or_a_data_error(data):
    try:
        a = parse_idx(data)
    except DataError:
        return
    assert a.size * a.itemsize == len(data) - 4 - 4 * a.ndim


@SLOW
@given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=3))
def test_any_bytes_named_png_are_images_or_a_data_error(tmp_path_factory, blobs):
    d = tmp_path_factory.mktemp("png")
    for i, b in enumerate(blobs):
        (d / f"{i}.png").write_bytes(b)
    try:
        vaelab.load_data(vaelab.DataConfig(dataset="folder", data_dir=str(d)))
    except DataError:
        pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz") / "run"
    vaelab.train(Config().override(epochs=1, hidden=(16,), latent_dim=2), d, progress=False)
    return d


@SLOW
@given(st.dictionaries(st.sampled_from(["format", "image_shape", "model_settings", "epoch",
                                        "x"]), st.text(max_size=40), max_size=4))
def test_any_weights_metadata_is_a_model_or_a_run_error(run, tmp_path_factory, meta):
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("meta") / "r"
    shutil.copytree(run, d)
    weights = load_file(str(d / "model.safetensors"))
    save_file(weights, str(d / "model.safetensors"), metadata=meta)
    try:
        vaelab.load_run(d)
    except (RunError, ConfigError):
        pass


@SLOW
@given(st.binary(max_size=300), st.sampled_from(["x.npy", "x-idx3-ubyte", "x.gz"]))
def test_any_file_given_to_compress_is_images_or_a_data_error(tmp_path_factory, data, name):
    from vaelab.data.images import read_images

    p = tmp_path_factory.mktemp("in") / name
    p.write_bytes(data)
    try:
        f = read_images(p, (1, 8, 8), 17)
    except DataError:
        return
    assert f.images.dtype == np.uint8 and f.images.shape[1:] == (1, 8, 8)
    json.dumps(f.meta)  # what restores the file is plain JSON


# ---- compressed files: any header and body, checksummed as a writer would ----------------
@pytest.fixture(scope="module")
def coded(run):
    pytest.importorskip("constriction")
    from vaelab.coding.compress import CodingSettings, compress
    from vaelab.coding.container import read_container

    model, cfg = vaelab.load_run(run)
    x = vaelab.load_data(cfg.data).test.stored().numpy()[:3]
    data = compress(model, x, settings=CodingSettings(samples=1), version=1)
    header, body = read_container(data)
    return model, header, body, compress(model, x)


FIELDS = ["format", "model", "image_shape", "count", "levels", "settings", "device",
          "batches", "sha256", "words", "made_with", "meta", "other"]


@SLOW
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=3),
       st.lists(st.sampled_from(FIELDS), max_size=2), st.binary(max_size=64), st.booleans())
def test_any_compressed_file_is_images_or_a_coding_error(coded, changes, dropped, body, real):
    """Format 1's JSON header: any fields, any values."""
    from vaelab.coding.compress import decompress
    from vaelab.coding.container import pack_v1
    from vaelab.errors import CodingError

    model, header, real_body, _ = coded
    h = {k: v for k, v in {**header, **changes}.items() if k not in dropped}
    body = real_body if real else body[:len(body) // 4 * 4]
    try:
        x = decompress(model, pack_v1(h, body))
    except CodingError:
        return
    assert x.dtype == np.uint8 and x.shape[1:] == tuple(model.image_shape)


@SLOW
@given(st.binary(max_size=200))
def test_any_bytes_after_the_magic_are_a_coding_error(coded, data):
    import hashlib

    from vaelab.coding.compress import decompress
    from vaelab.coding.container import MAGIC
    from vaelab.errors import CodingError

    for blob in (MAGIC + data, b"\x89VL\x02" + data):
        for candidate in (blob, blob + hashlib.sha256(blob).digest(),
                          blob + hashlib.sha256(blob).digest()[:8]):
            with pytest.raises(CodingError):
                decompress(coded[0], candidate)


@SLOW
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 40))
def test_any_change_to_a_compact_header_is_images_or_a_coding_error(coded, edits, cut):
    """Format 2: bytes of the header changed or cut, checksummed anew."""
    import hashlib

    from vaelab.coding.compress import decompress
    from vaelab.errors import CodingError

    model, real = coded[0], coded[3]
    data = bytearray(real[:-8])
    for at, value in edits:
        if at < len(data):
            data[at] = value
    data = bytes(data[:len(data) - cut])
    try:
        x = decompress(model, data + hashlib.sha256(data).digest()[:8])
    except CodingError:
        return
    assert x.dtype == np.uint8 and x.shape[1:] == tuple(model.image_shape)


# ---- exported folders: any config.json beside the weights ----------------------------------
@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    from vaelab.runs.export import export_run

    return export_run(run, tmp_path_factory.mktemp("export") / "model")


@SLOW
@given(st.one_of(values, st.dictionaries(st.sampled_from(
    ["format", "config", "weights_sha256", "image_shape", "kind", "x"]), values, max_size=4)),
    st.booleans())
def test_any_exported_folder_is_a_model_or_a_run_error(exported, tmp_path_factory, info, keep):
    d = tmp_path_factory.mktemp("exp") / "m"
    shutil.copytree(exported, d)
    if keep:  # the real config.json with fields replaced
        real = json.loads((d / "config.json").read_text())
        info = {**real, **info} if isinstance(info, dict) else real
    (d / "config.json").write_text(json.dumps(info))
    try:
        model, cfg = vaelab.load_run(d)
    except (RunError, ConfigError):
        return
    assert cfg.data.data_dir is None  # a model from elsewhere brings no local path
