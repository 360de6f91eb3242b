"""Forward order, attack mode and BatchNorm: what the authors' order does on a BatchNorm model.

    OMP_NUM_THREADS=1 python benchmarks/bn_order.py --epochs 10 --seeds 0 1

The authors' code forwards more batches in train mode than fairdefense does, and
each train-mode forward moves BatchNorm's running statistics (used at evaluation):

- TRADES (TRADES, FRL, CFA code): natural, adversarial, natural again (the KL's
  anchor is a fresh forward); fairdefense: natural, adversarial.
- PGD-AT (CFA's and Rice et al.'s code): the attack in train mode (10 forwards of
  the iterates), the adversarial batch, then the clean batch after the step (for
  logging); fairdefense by default: the attack in eval mode, the adversarial batch.

Each variant trains the digits' SmallCNN with BatchNorm after every convolution and
reports test accuracy (clean, PGD-20; average and worst class) and where BatchNorm's
running mean sits between the clean and the adversarial batch statistics of the
training data, ``t = <rm - m_clean, m_adv - m_clean> / |m_adv - m_clean|^2`` (0: clean
statistics, 1: adversarial), for the first and the last BatchNorm layer.

The "code" variants emulate the extra train-mode forwards inside the objective; the
PGD-AT logging forward runs before the optimizer step instead of after it (one step's
difference in the weights).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from torch import nn

import fairdefense
from fairdefense.attacks import pgd
from fairdefense.data import load_dataset
from fairdefense.objectives import PGDAT, TRADES

__all__ = ["bn_small_cnn", "VARIANTS", "run", "main"]


def bn_small_cnn(num_classes: int = 10) -> nn.Module:
    """The digits' SmallCNN with BatchNorm after every convolution."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )


class TradesCodeOrder(TRADES):
    """TRADES forwarding natural, adversarial, natural (the KL anchor), as the code does."""

    def terms(self, model, x, y, x_adv, x_natural=None):
        outputs = super().terms(model, x, y, x_adv, x_natural)
        model(x)  # the code's second clean forward: only BatchNorm's running statistics change
        return outputs


class ATCodeOrder(PGDAT):
    """PGD-AT plus the clean train-mode forward the code runs after each step (for logging)."""

    def terms(self, model, x, y, x_adv, x_natural=None):
        outputs = super().terms(model, x, y, x_adv, x_natural)
        with torch.no_grad():
            model(x)
        return outputs


#: name -> (objective, attack mode, objective override or None)
VARIANTS = {
    "trades-ours": ("trades", "eval", None),
    "trades-code": ("trades", "eval", TradesCodeOrder),
    "at-ours": ("at", "eval", None),
    "at-train-attack": ("at", "train", None),
    "at-code": ("at", "train", ATCodeOrder),
}


def _bn_position(model: nn.Module, bundle, eps: float) -> list[float]:
    """``t`` for the first and last BatchNorm layers (see the module docstring)."""
    x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    y = bundle.train_targets
    model.eval()
    x_adv = pgd(model, x, y, eps, eps / 4, 10, generator=torch.Generator().manual_seed(0))
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    layers = [layers[0], layers[-1]]
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, inp, out, k=k: seen.__setitem__(k, inp[0].mean(dim=(0, 2, 3))))
             for k, m in enumerate(layers)]
    with torch.no_grad():
        model(x)
        clean = dict(seen)
        model(x_adv)
        adv = dict(seen)
    for h in hooks:
        h.remove()
    out = []
    for k, m in enumerate(layers):
        d = adv[k] - clean[k]
        out.append(float(((m.running_mean - clean[k]) * d).sum() / (d * d).sum()))
    return out


def run(variant: str, seed: int, epochs: int) -> dict:
    objective, mode, override = VARIANTS[variant]
    bundle = load_dataset("digits")
    torch.manual_seed(seed)
    model = bn_small_cnn(bundle.num_classes)
    config = fairdefense.TrainConfig(objective=objective, attack_mode=mode, epochs=epochs, seed=seed, device="cpu",
                                     eval_every=0)
    trainer = fairdefense.Trainer(model, bundle.train, bundle.class_names, config, test_data=bundle.test,
                                  clip=bundle.clip, dataset_defaults=bundle.defaults, progress=False)
    if override is not None:
        trainer.objective = override(trainer.config.beta) if override.has_beta else override()
    result = trainer.fit()
    s = result.report.summary()
    return {
        "variant": variant, "seed": seed, "epochs": epochs,
        "clean_avg": s["clean_acc"]["avg"], "clean_worst": s["clean_acc"]["worst"],
        "pgd20_avg": s["pgd20/robust_acc"]["avg"], "pgd20_worst": s["pgd20/robust_acc"]["worst"],
        "bn_t_first_last": _bn_position(result.model, bundle, trainer.config.eps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            row = run(variant, seed, args.epochs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\nvariant            clean avg/worst   PGD-20 avg/worst   BN t (first, last layer)")
    for variant in args.variants:
        rs = [r for r in rows if r["variant"] == variant]
        mean = lambda k: 100 * statistics.mean(r[k] for r in rs)  # noqa: E731
        t = [statistics.mean(r["bn_t_first_last"][i] for r in rs) for i in (0, 1)]
        print(f"{variant:18s} {mean('clean_avg'):5.1f} / {mean('clean_worst'):5.1f}    "
              f"{mean('pgd20_avg'):5.1f} / {mean('pgd20_worst'):5.1f}     {t[0]:.2f}, {t[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
