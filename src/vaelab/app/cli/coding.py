"""Commands that code data with a model: ``compress`` and ``decompress``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ...coding.compress import CodingSettings, check_model, compress, levels_of, unpack
from ...coding.container import read_header
from ...errors import ConfigError
from ...files import atomic_write
from .common import Command, add_data_dir_flag, add_progress_flag, command


DEFAULTS = CodingSettings()


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--which", choices=["best", "last"], default="best",
                   help="checkpoint of the run (default: best)")
    add_progress_flag(p)


@command("compress")
class Compress(Command):
    """code images losslessly with a trained VAE (bits-back with importance samples)"""

    description = (
        "Compress images losslessly with a run's model: bits-back coding with K importance "
        "samples on an ANS stack (constriction), about -log (1/K) sum_k w_k bits per image, "
        "which tends to -log p(x) as K grows (K = 1: the -ELBO). INPUT: an IDX file (raw or "
        ".gz), a .npy file of uint8 images, or a folder of PNGs, of the run's image shape; "
        "or, without INPUT, --split of the run's "
        "data set prepared by its protocol (e.g. the binarized test set of a Bernoulli run). "
        "`vaelab decompress` gives the same bytes (IDX, .npy) or pixels (PNGs) back. Needs: "
        "pip install 'vaelab[compress]'.")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", metavar="RUN", help="run directory")
        p.add_argument("input", metavar="INPUT", nargs="?",
                       help="IDX file, .npy file or folder of PNGs")
        p.add_argument("--out", metavar="FILE", required=True, help="the compressed file")
        p.add_argument("--split", choices=["train", "val", "test"],
                       help="without INPUT: this split of the run's data, as the run sees it")
        p.add_argument("--dataset", metavar="NAME",
                       help="with --split: another data set of the same shape, prepared by the "
                       "run's protocol (default: the run's)")
        p.add_argument("--samples", type=int, default=DEFAULTS.samples, metavar="K",
                       help=f"importance samples per image (default {DEFAULTS.samples}); "
                       "more: a smaller file, slower")
        p.add_argument("--independent", action="store_true",
                       help="draw each of the K particles from the stack (BB-IS) instead of "
                       "coupling them through one uniform (BB-CIS, the default): the same "
                       "rate, K times the bits the first images need")
        p.add_argument("--weights", choices=["auto", "fp32", "bf16"], default=DEFAULTS.weights,
                       help="precision of the decoder passes that weigh the particles "
                       "(default auto: bf16 where the CPU or GPU has fast bfloat16)")
        p.add_argument("--verbose-header", action="store_true",
                       help="also record the versions of vaelab, torch and constriction "
                       "that made the file (a few hundred bytes)")
        p.add_argument("--latent-bits", type=int, default=DEFAULTS.latent_bits,
                       help=f"latent bins 2^-BITS wide (default {DEFAULTS.latent_bits})")
        p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                       help=f"images coded at once (default {DEFAULTS.batch_size})")
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                       help="where the nets run (default cpu); a file made on cuda decodes "
                       "on cuda only")
        add_data_dir_flag(p)
        _run_args(p)

    def run(self, args: argparse.Namespace) -> int:
        from ...runs.rundir import load_run

        out = Path(args.out)
        _check_free(out)
        settings = CodingSettings(samples=args.samples, coupled=not args.independent,
                                  weights=args.weights, latent_bits=args.latent_bits,
                                  batch_size=args.batch_size)
        model, cfg = load_run(args.run, args.which, data_dir=args.data_dir)
        images = _input(args, cfg, model.image_shape, levels_of(model))
        stats: dict = {}
        t0 = time.perf_counter()
        data = compress(model, images.images, settings=settings, meta=images.meta,
                        progress=not args.no_progress, stats=stats, device=args.device,
                        verbose_header=args.verbose_header)
        seconds = time.perf_counter() - t0
        atomic_write(out, data)
        n, dims = len(images.images), images.images[0].size
        bpd = 8 * len(data) / (n * dims)
        how = "each pixel uniformly: the model codes these images worse" \
            if stats["code"] == "uniform" else \
            f"ideal -log2 (1/K) sum w: {stats['ideal_bits'] / (n * dims):.4f}, K = {args.samples}"
        print(f"{n} images ({n * dims:,} pixels) -> {out}: {len(data):,} bytes, {bpd:.4f} bits/dim "
              f"({how}); {seconds:.1f} s, {n / max(seconds, 1e-9):.0f} images/s")
        return 0


def _check_free(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ConfigError(f"{out} exists; choose another --out or delete it first")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")


def _input(args, cfg, shape, levels):
    from ...data.images import ImageFile, read_images

    if args.input and (args.split or args.dataset):
        raise ConfigError("give INPUT or --split (with --dataset), not both")
    if args.input:
        return read_images(args.input, shape, levels)
    if not args.split:
        raise ConfigError("give INPUT (an IDX file, a .npy file or a folder of PNGs) or "
                          "--split test (the run's own test set)")
    from ...data.splits import load_data

    data_cfg = cfg.data if not args.dataset else cfg.override(dataset=args.dataset).data
    data = load_data(data_cfg)
    split = data.split(args.split)
    if split.dynamic:
        raise ConfigError(f"the {args.split} split is binarized anew for every batch; compress "
                          "the val or test split (binarized once, with the run's seed)")
    if data.image_shape != tuple(shape):
        raise ConfigError(f"{data.name} has images of shape {data.image_shape}; the run codes "
                          f"{tuple(shape)}")
    return ImageFile(split.stored().cpu().numpy(),
                     {"kind": "split", "dataset": data.name, "split": args.split})


@command("decompress")
class Decompress(Command):
    """give back the images of a `vaelab compress` file, exactly"""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("file", metavar="FILE", help="a file written by `vaelab compress`")
        p.add_argument("--run", metavar="RUN", required=True,
                       help="the run that compressed it")
        p.add_argument("--out", metavar="OUTPUT", required=True,
                       help="where the images go: the original's kind (an IDX or .npy file, "
                       "a folder of PNGs; a split: a .npy of (N, C, H, W))")
        _run_args(p)

    def run(self, args: argparse.Namespace) -> int:
        from ...data.images import ImageFile, check_meta, write_images
        from ...runs.rundir import load_run

        out = Path(args.out)
        _check_free(out)
        src = Path(args.file)
        if not src.is_file():
            raise ConfigError(f"{src} is not a file")
        model, _ = load_run(args.run, args.which)
        data = src.read_bytes()
        header = read_header(data)  # the model, and how to restore the images: before decoding
        check_model(model, header)
        check_meta(header["meta"], (header["count"], *header["image_shape"]), out)
        t0 = time.perf_counter()
        images, header = unpack(model, data, progress=not args.no_progress)
        seconds = time.perf_counter() - t0
        write_images(ImageFile(images, header["meta"]), out)
        print(f"{len(images)} images -> {out} (checksum verified); {seconds:.1f} s, "
              f"{len(images) / max(seconds, 1e-9):.0f} images/s")
        return 0
