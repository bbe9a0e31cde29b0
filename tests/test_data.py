import gzip
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data.datasets import FASHION_MNIST, MNIST
from vaelab.data.idx import parse_idx, read_idx, read_idx_pair
from vaelab.data.splits import load_data
from vaelab.errors import DataError


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_mnist_test_set_parses(mnist_t10k):
    x, y = read_idx_pair(mnist_t10k / "t10k-images-idx3-ubyte.gz",
                         mnist_t10k / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels
    # gz and raw files give the same array
    raw = read_idx(mnist_t10k / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(raw, y)


@pytest.mark.parametrize("mangle, match", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "longer"),
    (lambda b: b[:2] + b"\x0c" + b[3:], "type code 0x0C"),  # a wrong type code says so
    (lambda b: b[:10], "truncated"),
    (lambda b: b"\x12\x34" + b[2:], "bad magic number"),
    (lambda b: b[:2] + b"\x42" + b[3:], "bad magic number"),
    (lambda b: b[:2], "bad magic number"),
])
def test_bad_idx_bytes(mangle, match):
    good = idx_bytes(np.arange(24).reshape(2, 3, 4))
    assert parse_idx(good).shape == (2, 3, 4)
    with pytest.raises(DataError, match=match):
        parse_idx(mangle(good), "f")


def test_corrupt_gzip_and_mismatched_pair(tmp_path, mnist_t10k):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = (mnist_t10k / "t10k-images-idx3-ubyte.gz").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(bad)
    images = tmp_path / "img"
    images.write_bytes(idx_bytes(np.zeros((5, 28, 28))))
    with pytest.raises(DataError, match="holds 5 images but .* holds 10000 labels"):
        read_idx_pair(images, mnist_t10k / "t10k-labels-idx1-ubyte.gz")


def test_lookup_order_and_offline_error(tmp_path, mnist_t10k, monkeypatch):
    # --data-dir first, also when it holds the files directly
    first, second = tmp_path / "a", tmp_path / "b" / "mnist"
    for d in (first, second):
        d.mkdir(parents=True)
        for f in mnist_t10k.iterdir():
            shutil.copy(f, d / f.name)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "b"))
    # the train files are missing: not found anywhere -> clear error naming the places
    with pytest.raises(DataError, match=r"(?s)mnist not found.*train-images-idx3-ubyte.gz.*"
                       + str(first)):
        MNIST.fetch(str(first), download=False)
    dirs = MNIST.search_dirs(str(first))
    assert dirs[:4] == [first / "mnist", first, second, tmp_path / "b"]


def test_offline_download_error_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError, match=r"(?s)could not download.*127\.0\.0\.1.*copy the files"):
        MNIST.fetch(str(tmp_path), mirrors=("http://127.0.0.1:9/",))
    assert not any((tmp_path / "mnist").glob("*")) if (tmp_path / "mnist").exists() else True


@pytest.mark.slow
def test_fashion_mnist_protocol_split(fashion_dir):
    data = load_data(DataConfig(dataset="fashion-mnist"))
    assert (len(data.train), len(data.val), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.binarize == "dynamic" and data.image_shape == (1, 28, 28)
    # held-out splits are binarized once, reproducibly; the training split is re-drawn
    again = load_data(DataConfig(dataset="fashion-mnist"))
    assert torch.equal(data.test.images, again.test.images)
    assert set(data.test.images.unique().tolist()) == {0, 1} and data.test.max_value == 1
    a, b = data.train.batch(slice(0, 256)), data.train.batch(slice(0, 256))
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    # the same 50k/10k split whatever the run seed; another split seed changes it
    other = load_data(DataConfig(dataset="fashion-mnist", split_seed=1))
    assert not torch.equal(data.val.images, other.val.images)
    assert data.classes[0] == "T-shirt/top"


def test_digits_are_read_as_scikit_learn_loads_them():
    """The digits come from scikit-learn's bundled file without importing scikit-learn:
    the same images and labels as ``load_digits``, in a process where it is not loaded."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from vaelab.data.datasets import _digits_arrays

    images, target = _digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)
    code = ("import sys; from vaelab.data.datasets import _digits_arrays; _digits_arrays(); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mode", ["none", "dynamic", "static"])
def test_digits_binarization_modes(mode):
    data = load_data(DataConfig(dataset="digits", binarize=mode))
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    x1, x2 = data.train.batch(slice(0, 500)), data.train.batch(slice(0, 500))
    assert x1.dtype == torch.float32 and 0 <= x1.min() and x1.max() <= 1
    if mode == "none":
        assert torch.equal(x1, x2) and len(x1.unique()) == 17  # grey levels 0/16 .. 16/16
    else:
        assert set(x1.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(x1, x2) == (mode == "static")
        # the one-off draw follows the grey level: P(x=1) ~ mean grey value
        grey = load_data(DataConfig(dataset="digits", binarize="none"))
        assert abs(data.test.batch(slice(None)).mean() - grey.test.batch(slice(None)).mean()) < 0.01


@pytest.mark.parametrize("max_value", [255, 16])
def test_dynamic_binarization_draws_bernoulli_of_each_grey_level(max_value):
    """Each grey level g is drawn 1 with probability g / max_value (to 2^-16): black
    and white exactly, every level in between within 4.5 standard errors over 4,000 draws;
    the draws come from the generator (the same seed, the same bits) and batch shards
    take their rows of the global batch's bits."""
    from vaelab.data.splits import Split
    from vaelab.noise import batch_shard

    levels = torch.arange(max_value + 1, dtype=torch.uint8)
    images = levels.repeat(4000).view(4000, 1, 1, max_value + 1)
    split = Split(images, None, max_value, dynamic=True)
    x = split.batch(slice(None), torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and set(x.unique().tolist()) == {0.0, 1.0}
    freq, p = x.mean(0).flatten().double(), levels.double() / max_value
    assert freq[0] == 0 and freq[-1] == 1
    se = (p * (1 - p) / 4000).sqrt()
    assert ((freq - p).abs() <= 4.5 * se + 2 ** -16).all(), (freq - p).abs().max()
    # over all levels at once (a g / (max_value + 1) rule would be 4.9 errors off here)
    assert abs((freq - p).sum()) <= 4.5 * se.square().sum().sqrt() + 2 ** -16
    again = split.batch(slice(None), torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    with batch_shard(1000, 2500, 4000):
        part = split.batch(slice(1000, 2500), torch.Generator().manual_seed(0))
    assert torch.equal(part, x[1000:2500])


def test_batches_cover_the_split_once():
    data = load_data(DataConfig(dataset="digits", binarize="none"))
    g = torch.Generator().manual_seed(0)
    seen = torch.cat(list(data.train.batches(100, shuffle=True, generator=g)))
    assert seen.shape[0] == len(data.train)
    # same multiset of images as the split itself
    ref = data.train.batch(slice(None)).flatten(1).sum(1).sort().values
    assert torch.allclose(seen.flatten(1).sum(1).sort().values, ref)


def _png_folder(root, sizes, classes=("cat", "dog")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, s in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")


def test_folder_dataset(tmp_path):
    _png_folder(tmp_path / "imgs", [12] * 10)
    data = load_data(DataConfig(dataset="folder", data_dir=str(tmp_path / "imgs"), channels=3))
    assert data.image_shape == (3, 12, 12) and data.classes == ("cat", "dog")
    assert len(data.train) + len(data.val) + len(data.test) == 20
    small = load_data(DataConfig(dataset="folder", data_dir=str(tmp_path / "imgs"),
                                 image_size=8))
    assert small.image_shape == (1, 8, 8)


def _all_images(data):
    return torch.cat([data.train.stored(), data.val.stored(), data.test.stored()])


def test_folder_is_decoded_once_and_again_when_a_file_changes(tmp_path, caplog):
    from vaelab.data.datasets import cache_dir

    root = tmp_path / "imgs"
    _png_folder(root, [12] * 5)
    cfg = DataConfig(dataset="folder", data_dir=str(root), channels=3)
    first = _all_images(load_data(cfg))  # a copy: the kept file is damaged below
    kept = list((cache_dir() / "folders").glob("*.npy"))
    assert len(kept) == 1
    # same size and time stamp, unreadable content: only the decoded copy can be read now
    victim = root / "cat" / "0.png"
    st = victim.stat()
    original = victim.read_bytes()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert torch.equal(_all_images(load_data(cfg)), first)
    # a real change (new content, new time stamp) is decoded again
    from PIL import Image

    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = _all_images(load_data(cfg))
    assert not torch.equal(changed, first)
    assert (changed == 7).flatten(1).all(1).sum() == 1
    # another setting, another copy; a damaged copy is decoded again, with a warning
    load_data(DataConfig(dataset="folder", data_dir=str(root), channels=1))
    kept = sorted((cache_dir() / "folders").glob("*.npy"), key=lambda p: p.stat().st_mtime)
    assert len(kept) == 3
    victim.write_bytes(original)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    for p in kept:
        p.write_bytes(p.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="vaelab.data.datasets"):
        again = load_data(cfg)
    assert "decoding the images again" in caplog.text
    assert torch.equal(_all_images(again), first)


def _decoded_by_hand(root):
    """The folder's images (N, 3, H, W) and labels in sorted file order, read with PIL."""
    from PIL import Image

    files = sorted(root.rglob("*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1) for f in files])
    return x, np.array([["cat", "dog"].index(f.parent.name) for f in files])


@pytest.mark.parametrize("stream", ["no", "yes"])
def test_folder_splits_share_the_memory_mapped_images(tmp_path, stream):
    from vaelab.data.datasets import DATASETS
    from vaelab.data.splits import Split

    root = tmp_path / "imgs"
    _png_folder(root, [12] * 15)
    cfg = DataConfig(dataset="folder", data_dir=str(root), channels=3, val_size=5,
                     stream=stream)
    data = load_data(cfg)
    assert isinstance(DATASETS.get("folder")(cfg).train_images, np.memmap)
    # the splits are rows of one mapping, not copies
    assert data.train.rows is not None and data.val.rows is not None
    assert data.train.images.data_ptr() == data.val.images.data_ptr()
    # ... holding what a split of the images in memory holds: a seeded 20% test part, then
    # the validation images drawn from the rest with the split seed
    x, y = _decoded_by_hand(root)
    perm = np.random.default_rng(0).permutation(30)
    test, rest = perm[:6], perm[6:]
    split = np.random.default_rng(0).permutation(24)
    parts = {"train": rest[split[5:]], "val": rest[split[:5]], "test": test}
    for name, idx in parts.items():
        s = data.split(name)
        assert torch.equal(s.stored(), torch.from_numpy(x[idx]))
        assert torch.equal(s.labels, torch.from_numpy(y[idx]))
    # batches, shuffled or not, and subsets are those of the same split held in memory
    plain = Split(torch.from_numpy(x[parts["train"]]), torch.from_numpy(y[parts["train"]]), 255)
    for shuffle in (False, True):
        got, want = (list(s.batches(4, shuffle, torch.Generator().manual_seed(1), labels=True))
                     for s in (data.train, plain))
        assert len(got) == len(want) == 5
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(got, want))
    sub = data.train.subset(torch.tensor([3, 0, 7]))
    assert torch.equal(sub.stored(), plain.subset(torch.tensor([3, 0, 7])).stored())
    assert torch.equal(sub.batch(slice(1, 3)), plain.batch(torch.tensor([0, 7])))


def test_folder_decodes_and_loads_without_holding_the_images_in_memory(tmp_path):
    """Decoding writes one image at a time to the mapped file and the splits are views of
    it: the memory numpy allocates stays far below the size of the images."""
    import tracemalloc

    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(
            root / f"{i:03d}.png", compress_level=0)
    size = 300 * 3 * 128 * 128  # 14.7 MB
    cfg = DataConfig(dataset="folder", data_dir=str(root), channels=3)
    for _ in ("decode", "read the decoded copy"):
        tracemalloc.start()
        data = load_data(cfg)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < size / 10, f"{peak} bytes allocated for {size} bytes of images"
    assert len(data.train) + len(data.val) + len(data.test) == 300


def test_folder_without_disk_room_for_the_decoded_copy_says_so(tmp_path):
    """Decoding reserves the file's blocks first: with no room (here a 1 MB file-size
    limit) the error says so, instead of a write to a mapped page killing the process."""
    import subprocess
    import sys

    from PIL import Image

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(40):
        Image.fromarray(np.full((128, 128, 3), i, np.uint8)).save(root / f"{i}.png")
    code = f"""
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
from vaelab.config import DataConfig
from vaelab.data.splits import load_data
from vaelab.errors import DataError
try:
    load_data(DataConfig(dataset="folder", data_dir={str(root)!r}, channels=3))
except DataError as e:
    print("DataError:", e)
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "DataError: no room for the decoded images (2 MiB)" in out.stdout
    assert not list((tmp_path / "cache").rglob("*.npy*"))  # nothing half-written is left


@pytest.mark.parametrize("setup, match", [
    (lambda d: _png_folder(d, [12, 13]), r"different sizes.*--image-size"),
    (lambda d: d.mkdir(), "no PNG or JPEG images"),
    (lambda d: (d.mkdir(), (d / "x.png").write_bytes(b"not a png")), "cannot read image .*x.png"),
])
def test_folder_errors(tmp_path, setup, match):
    d = tmp_path / "imgs"
    setup(d)
    with pytest.raises(DataError, match=match):
        load_data(DataConfig(dataset="folder", data_dir=str(d)))


def test_recompressed_fashion_copy_is_accepted_by_content_checksum(fashion_dir):
    f = FASHION_MNIST.files["test_labels"]
    data = (fashion_dir / f.name).read_bytes()
    assert f.verify(data)  # Debian's gzip differs, the content does not
    assert f.verify(gzip.compress(gzip.decompress(data), compresslevel=1))
    assert not f.verify(gzip.compress(gzip.decompress(data)[:-1] + b"\x07"))
