"""The encoder's gradient of the importance-weighted bound, plain (reparameterized) against
doubly reparameterized (``--iwae-gradient dreg``, Tucker et al. 2019), on a trained model:
for k importance samples, the signal-to-noise ratio |mean| / sd of each encoder weight's
gradient over repeated draws on the same batch (median over the weights), and the ratio
of the two estimators' total variance. Rainforth et al. (2018) showed the plain one's
ratio falling as k grows; the doubly reparameterized one's should not.

    vaelab train --out runs/digits            # or any one-layer run
    python benchmarks/iwae_gradients.py runs/digits --k 1,5,50 --draws 200
"""
from __future__ import annotations

import argparse

import torch

from vaelab.data.splits import load_data
from vaelab.errors import USER_ERRORS
from vaelab.objectives import elbo
from vaelab.runs.rundir import load_run


def encoder_gradients(model, x, k: int, dreg: bool, draws: int) -> torch.Tensor:
    """(draws, encoder weights): one gradient of the batch's mean bound per draw."""
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder")]
    out = []
    for seed in range(draws):
        torch.manual_seed(seed)
        model.zero_grad()
        loss, _ = elbo(model, x, k=k, iwae=True, dreg=dreg)
        loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in enc]))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (one stochastic layer)")
    p.add_argument("--k", default="1,5,50", help="importance samples, comma separated")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--batch", type=int, default=64, help="validation images in the batch")
    args = p.parse_args(argv)
    try:
        model, cfg = load_run(args.run)
        x = load_data(cfg.data, "cpu").val.batch(slice(0, args.batch))
    except USER_ERRORS as e:
        p.error(str(e))
    if model.layers > 1:
        p.error(f"{args.run} is a hierarchy: the doubly reparameterized gradient needs one "
                "stochastic layer")
    model.train(False)
    print(f"{args.run}: {args.batch} validation images, {args.draws} draws each\n")
    print("| k | median SNR, plain | median SNR, dreg | variance, dreg / plain |")
    print("|---:|---:|---:|---:|")
    for k in map(int, args.k.split(",")):
        g = {d: encoder_gradients(model, x, k, d, args.draws) for d in (False, True)}
        snr = {d: (v.mean(0).abs() / v.std(0).clamp_min(1e-30)).median().item()
               for d, v in g.items()}
        ratio = (g[True].var(0).sum() / g[False].var(0).sum()).item()
        print(f"| {k} | {snr[False]:.3f} | {snr[True]:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
