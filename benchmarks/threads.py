"""Torch threads on shared CPUs: fairdefense's default against 1 and 2 threads, idle and loaded.

Each measurement runs in a fresh process (torch's thread pool is set once per process):
one training epoch of PGD-AT on the digits, then PGD-20 evaluation of ``--eval-samples``
test images. "loaded" starts one busy process per usable CPU beside it, as a laptop
running other work or a second run would. Writes a ``threads`` section of
``docs/benchmarks.md`` and a key of ``docs/benchmarks.json``.

    python benchmarks/threads.py                       # on this machine's usable CPUs
    taskset -c 0,1 python benchmarks/threads.py        # as a 2-core machine
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from _common import DOCS, machine_info, median, replace_section, write_json

#: Thread settings measured: fairdefense's default (the usable CPUs), torch's own default, fixed counts.
VARIANTS = ("fairdefense default", "torch default", "1", "2")


def _worker(variant: str, eval_samples: int) -> dict[str, float]:
    import torch
    from torch.utils.data import DataLoader, Subset

    import fairdefense
    from fairdefense.evaluation import evaluate
    from fairdefense.threads import set_threads, usable_cpus

    if variant == "fairdefense default":
        threads = set_threads(None)
    elif variant == "torch default":
        threads = torch.get_num_threads()
    else:
        threads = set_threads(int(variant))
    trainer = fairdefense.api.build_trainer(fairdefense.TrainConfig(epochs=1, seed=0), progress=False)
    start = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - start
    test = Subset(trainer.test_data, range(min(eval_samples, len(trainer.test_data))))
    start = time.perf_counter()
    evaluate(trainer.model, DataLoader(test, batch_size=128), trainer.class_names, ["pgd20"],
             eps=trainer.config.eps, norm=trainer.config.norm, clip=trainer.clip, device="cpu", seed=0)
    return {"threads": threads, "usable_cpus": usable_cpus(), "train_epoch_s": train_s,
            "eval_s": time.perf_counter() - start}



def _measure(variant: str, eval_samples: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", variant, "--eval-samples", str(eval_samples)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(repeats: int, eval_samples: int, timeout: float) -> dict[str, Any]:
    from fairdefense.threads import usable_cpus

    results: dict[str, Any] = {"machine": machine_info("cpu"), "eval_samples": eval_samples, "conditions": {}}
    for condition in ("idle", "loaded"):
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cpus())] \
            if condition == "loaded" else []
        try:
            runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for r in range(repeats):
                for v in VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]:
                    runs[v].append(_measure(v, eval_samples, timeout))
        finally:
            for p in load:
                p.kill()
        results["conditions"][condition] = {
            v: {
                "threads": next((m["threads"] for m in ms if "threads" in m), None),
                "train_epoch_s": median([m["train_epoch_s"] for m in ms if "train_epoch_s" in m]),
                "eval_s": median([m["eval_s"] for m in ms if "eval_s" in m]),
                "timeouts": sum("timeout_s" in m for m in ms),
            }
            for v, ms in runs.items()
        }
    return results


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "## CPU threads",
        "",
        f"Measured on {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, torch {m['torch']}; "
        f"one digits PGD-AT epoch and PGD-20 on {results['eval_samples']} test images, median of repeats, "
        f"each in a fresh process. \"loaded\": one busy process per usable CPU beside the run. "
        f"\"cut\": repeats stopped at the time limit (`--timeout`), left out of the median.",
        "",
        "| condition | threads | torch threads | epoch (s) | evaluation (s) | epoch vs 1 thread | cut |",
        "|---|---|---|---|---|---|---|",
    ]
    for condition, variants in results["conditions"].items():
        one = variants["1"]["train_epoch_s"]
        for v, r in variants.items():
            epoch, evaluation = r["train_epoch_s"], r["eval_s"]
            done = epoch == epoch  # NaN when every repeat was cut
            ratio = f"{epoch / one:.2f}x" if done and one == one else ""
            lines.append(f"| {condition} | {v} | {r['threads']} | {f'{epoch:.1f}' if done else '-'} | "
                         f"{f'{evaluation:.1f}' if done else '-'} | {ratio} | {r['timeouts'] or ''} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement before it is cut")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.eval_samples)))
        return 0
    results = run(args.repeats, args.eval_samples, args.timeout)
    text = render(results)
    print(text)
    if not args.no_write:
        replace_section(DOCS / "benchmarks.md", "threads", text)
        path = DOCS / "benchmarks.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["threads"] = results
        write_json(path, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
