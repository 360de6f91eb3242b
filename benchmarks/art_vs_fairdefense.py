"""Side by side: ART's AdversarialTrainerMadryPGD vs fairdefense's FairAdversarialTrainer (no plugin).

Same data (the embedded digits, fairdefense's fixed train/test split), same model
(SmallCNN, same initial weights), same optimizer, same attack (L-inf PGD, eps,
eps_step, max_iter, one random start), same epochs and batch size; both train a
``PyTorchClassifier`` in place. Both trained classifiers are then scored by the
same evaluators: fairdefense's PGD-20 (per class) and ART's own PGD-20
(``num_random_init=0``) through :func:`fairdefense.art.per_class_robustness`.

    python benchmarks/art_vs_fairdefense.py                 # CPU, 15 epochs, batch 32
    python benchmarks/art_vs_fairdefense.py --device gpu --epochs 20 --json out.json

Reported: wall time of ``fit`` for each and the ratio ART / fairdefense, clean
and robust accuracy (average and worst class).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainerMadryPGD
from art.estimators.classification import PyTorchClassifier
from torch import nn

from fairdefense.art import FairAdversarialTrainer, per_class_robustness
from fairdefense.data import load_dataset
from fairdefense.models import SmallCNN


def arrays(data) -> tuple[np.ndarray, np.ndarray]:
    x, y = data.tensors
    return x.numpy().astype(np.float32), y.numpy()


def make_classifier(args: argparse.Namespace) -> PyTorchClassifier:
    torch.manual_seed(args.seed)
    model = SmallCNN(num_classes=10, input_shape=(1, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, optimizer=opt, clip_values=(0.0, 1.0),
                             device_type=args.device)


def sync(args: argparse.Namespace) -> None:
    if args.device == "gpu" and torch.cuda.is_available():
        torch.cuda.synchronize()


def score(clf: PyTorchClassifier, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    ours = per_class_robustness(clf, x, y, "pgd20", eps=args.eps, batch_size=256)
    art_pgd = ProjectedGradientDescent(clf, eps=args.eps, eps_step=args.eps / 4, max_iter=20, num_random_init=0,
                                       batch_size=256, verbose=False)
    theirs = per_class_robustness(clf, x, y, art_pgd, batch_size=256)
    s, t = ours.summary(), theirs.summary()
    return {
        "clean_avg": s["clean_acc"]["avg"], "clean_worst": s["clean_acc"]["worst"],
        "pgd20_avg": s["pgd20/robust_acc"]["avg"], "pgd20_worst": s["pgd20/robust_acc"]["worst"],
        "art_pgd20_avg": t["ProjectedGradientDescent/robust_acc"]["avg"],
        "art_pgd20_worst": t["ProjectedGradientDescent/robust_acc"]["worst"],
    }


def run(args: argparse.Namespace) -> dict:
    bundle = load_dataset("digits")
    x, y = arrays(bundle.train)
    x_test, y_test = arrays(bundle.test)
    attack = dict(eps=args.eps, eps_step=args.eps_step, max_iter=args.steps, num_random_init=1)
    results = {}

    clf = make_classifier(args)
    art_trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=args.epochs, batch_size=args.batch_size, **attack)
    sync(args)
    start = time.perf_counter()
    art_trainer.fit(x, y)
    sync(args)
    results["art"] = {"fit_s": time.perf_counter() - start, **score(clf, x_test, y_test, args)}

    clf = make_classifier(args)
    ours = FairAdversarialTrainer(clf, nb_epochs=args.epochs, batch_size=args.batch_size, progress=False, **attack)
    sync(args)
    start = time.perf_counter()
    ours.fit(x, y)
    sync(args)
    results["fairdefense"] = {"fit_s": time.perf_counter() - start, **score(clf, x_test, y_test, args)}

    results["speedup_art_over_fairdefense"] = results["art"]["fit_s"] / results["fairdefense"]["fit_s"]
    results["settings"] = {
        **vars(args), "train_samples": len(x), "test_samples": len(x_test), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device == "gpu" and torch.cuda.is_available() else None,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--eps-step", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable timings on shared machines)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(args)
    print(f"{'':12} {'fit [s]':>8} {'clean avg':>9} {'clean worst':>11} {'PGD20 avg':>9} {'PGD20 worst':>11} "
          f"{'ART-PGD20 avg':>13} {'ART-PGD20 worst':>15}")
    for name in ("art", "fairdefense"):
        r = results[name]
        print(f"{name:12} {r['fit_s']:8.1f} {r['clean_avg']:9.3f} {r['clean_worst']:11.3f} {r['pgd20_avg']:9.3f} "
              f"{r['pgd20_worst']:11.3f} {r['art_pgd20_avg']:13.3f} {r['art_pgd20_worst']:15.3f}")
    print(f"time ratio ART / fairdefense: {results['speedup_art_over_fairdefense']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
