"""Data-parallel training: what DistributedDataParallel costs, what N processes give, what is exchanged.

Three measurements, each on the workloads of ``speed.py``::

    python benchmarks/distributed.py                       # CPU, digits: all three
    python benchmarks/distributed.py --device cuda --workload synthetic32 --procs 8   # a GPU machine

1. **One process, plain vs DDP.** The same run twice per repeat, interleaved: the
   trainer as it runs in one process, and the trainer with its loss forward wrapped in
   ``DistributedDataParallel`` in a one-process group (gloo on CPU, NCCL on GPU), so
   that every step pays DDP's bucketing and gradient all-reduce. Ratio of the training
   seconds of the last epoch (``train_time``: the batches only), median over repeats.
2. **N processes.** The same run in 1 and in ``--procs`` processes (spawned alike, one
   GPU each on CUDA, one thread each on CPU), interleaved repeats, with the same global
   batch: seconds of the last epoch and the speed-up (median of paired ratios). On a CPU
   machine the processes share its cores.
3. **Bytes all-reduced beyond the gradients.** Every call of
   :func:`fairdefense.distributed.all_reduce_sum` / ``all_reduce_min`` is counted in one
   process (they are the identity there, and the same calls every process makes):
   bytes per training step (plugin statistics) and per epoch (loss and finite-loss
   checks every ``log_every`` batches, ``ClassStats``, validation and test counts), per
   strategy. Gradients (DDP's buckets, the model's size) are listed for scale.

Writes the ``distributed-<device>-<workload>`` section of ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, machine_info, median, paired_ratios, replace_section  # noqa: E402
from speed import load_workload  # noqa: E402

import fairdefense  # noqa: E402
from fairdefense import distributed  # noqa: E402

#: Strategies whose extra traffic is counted (plugin names, as on the command line).
STRATEGIES = ("", "faal", "frl", "baseline-reweight", "cfa", "bat", "wat", "ema", "awp")


def _config(args: argparse.Namespace, epochs: int, plugins: tuple[str, ...] = ()) -> fairdefense.TrainConfig:
    return fairdefense.TrainConfig(
        epochs=epochs, batch_size=args.batch_size, attack_steps=args.attack_steps, lr=0.05, schedule="constant",
        device=args.device, eval_every=0, eps=args.eps, plugins=plugins, seed=0,
    )


def _trainer(args: argparse.Namespace, epochs: int, plugins: tuple[str, ...] = ()) -> fairdefense.Trainer:
    w = load_workload(args.workload, train_limit=args.train_limit, test_limit=args.test_limit)
    return fairdefense.Trainer(w.make_model(0), w.train, w.class_names, _config(args, epochs, plugins),
                               test_data=w.test, progress=False)


def _last_epoch_seconds(trainer: fairdefense.Trainer) -> float:
    return trainer.fit().history[-1]["train_time"]


def _one_process_group(backend: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_vs_ddp(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of the last epoch, plain and DDP-wrapped, interleaved repeats."""
    backend = "nccl" if args.device == "cuda" else "gloo"
    _one_process_group(backend)
    plain, ddp = [], []
    try:
        for _ in range(args.repeats):
            plain.append(_last_epoch_seconds(_trainer(args, args.epochs)))
            t = _trainer(args, args.epochs)
            device_ids = [t.device.index or 0] if t.device.type == "cuda" else None
            t.train_net = torch.nn.parallel.DistributedDataParallel(t.model, device_ids=device_ids)
            ddp.append(_last_epoch_seconds(t))
    finally:
        torch.distributed.destroy_process_group()
    return {"plain": plain, "ddp": ddp, "ratio": median(paired_ratios(ddp, plain)), "backend": backend}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1) if args.device == "cpu" else torch.cuda.set_device(rank)
    backend = "nccl" if args.device == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=600))
    seconds = _last_epoch_seconds(_trainer(args, args.epochs))
    if rank == 0:
        Path(out).write_text(str(seconds))
    torch.distributed.destroy_process_group()


def processes(args: argparse.Namespace, world: int, out: Path) -> float:
    """Seconds of the last epoch with ``world`` processes (the same global batch)."""
    mp.start_processes(_worker, args=(world, _free_port(), args, str(out)), nprocs=world, start_method="spawn")
    return float(out.read_text())


def scaling(args: argparse.Namespace, out: Path) -> dict[int, list[float]]:
    """Seconds of the last epoch with 1 and ``args.procs`` processes, interleaved repeats."""
    seconds: dict[int, list[float]] = {1: [], args.procs: []}
    for r in range(args.repeats):
        for world in ((1, args.procs) if r % 2 == 0 else (args.procs, 1)):
            seconds[world].append(processes(args, world, out))
    return seconds


def traffic(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bytes through the trainer's collectives, per step and per epoch, per strategy (one process)."""
    tally: dict[str, int] = {}
    real_sum, real_min = distributed.all_reduce_sum, distributed.all_reduce_min

    def counting(real):
        def call(tensor):
            tally["bytes"] = tally.get("bytes", 0) + tensor.numel() * tensor.element_size()
            return real(tensor)
        return call

    rows = []
    distributed.all_reduce_sum, distributed.all_reduce_min = counting(real_sum), counting(real_min)
    try:
        for name in STRATEGIES:
            t = _trainer(args, 1, (name,) if name else ())
            steps = len(t._loader(t.train_data, shuffle=True))
            tally.clear()
            x, y, window = next(iter(t._loader(t.train_data, shuffle=True)))
            t.step(0, 0, x.to(t.device), y.to(t.device).long(), window)
            per_step = tally.get("bytes", 0)
            tally.clear()
            t = _trainer(args, 1, (name,) if name else ())
            t.fit()
            per_epoch = tally.get("bytes", 0) - per_step * steps
            grads = sum(p.numel() * p.element_size() for p in t.model.parameters())
            rows.append({"strategy": name or "none", "per_step": per_step, "per_epoch_beyond_steps": per_epoch,
                         "gradients_per_step": grads, "steps": steps, "classes": t.run.num_classes})
    finally:
        distributed.all_reduce_sum, distributed.all_reduce_min = real_sum, real_min
    return rows


def render(args: argparse.Namespace, result: dict[str, Any], minutes: float, info: dict[str, Any]) -> str:
    d = result["ddp"]
    lines = [
        f"## Distributed: `{args.device}-{args.workload}`",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/distributed.py "
        f"{' '.join(sys.argv[1:])}`".rstrip() + f" ({minutes:.1f} min).",
        "",
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores, device `{args.device}`"
        + (f" ({info['gpu']})" if info.get("gpu") else "")
        + f"; torch {info['torch']}. Load average before: {'/'.join(map(str, info['load_average']))}.",
        "",
        f"Workload `{args.workload}`, batch {args.batch_size} (global), {args.attack_steps} attack steps, "
        f"{args.epochs} epochs per run, seconds of the last epoch (`train_time`).",
        "",
        "### 1. One process: plain vs DistributedDataParallel",
        "",
        "| repeats | plain s/epoch | DDP s/epoch | DDP / plain (median of paired ratios) | backend |",
        "|---|---|---|---|---|",
        f"| {len(d['plain'])} | {median(d['plain']):.2f} | {median(d['ddp']):.2f} | {d['ratio']:.3f}x "
        f"| {d['backend']} |",
        "",
        "### 2. N processes, same global batch",
        "",
        "| processes | s/epoch (median) | speed-up over 1 (median of paired ratios) |",
        "|---|---|---|",
    ]
    one = result["procs"][1]
    for n, s in sorted(result["procs"].items()):
        lines.append(f"| {n} | {median(s):.2f} | {median(paired_ratios(one, s)):.2f}x |")
    lines += [
        "",
        "### 3. Bytes all-reduced beyond the gradients",
        "",
        "| strategy | per training step | per epoch (besides the steps) | gradients per step (scale) |",
        "|---|---|---|---|",
    ]
    for row in result["traffic"]:
        lines.append(f"| {row['strategy']} | {row['per_step']} B | {row['per_epoch_beyond_steps']} B "
                     f"| {row['gradients_per_step']:,} B |")
    classes = result["traffic"][0]["classes"]
    lines += [
        "",
        f"{classes} classes. Per step: FAAL's class margin sums ({classes} float32), FRL's classes present "
        f"({classes} int64) and two weighted-mean normalisers, Baseline Reweight's normaliser. Per epoch: the loss and "
        "the finite-loss flag every `log_every` batches, the `ClassStats` counts and the validation and test counts "
        "(float64 per class and attack). AWP also averages its proxy model's gradients every step: one more "
        "gradient-sized all-reduce, not counted here (in one process it is skipped). DDP's gradient buckets are the "
        "last column; with BatchNorm, DDP also broadcasts rank 0's buffers at every forward.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--workload", choices=["digits", "synthetic32"], default="digits")
    p.add_argument("--procs", type=int, default=2, help="processes of measurement 2 (one GPU each on CUDA)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--attack-steps", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--test-limit", type=int, default=256)
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="write docs/benchmarks.md")
    args = p.parse_args(argv)
    args.eps = 0.2 if args.workload == "digits" else 8 / 255
    if args.device == "cpu":
        torch.set_num_threads(1)
    info = machine_info(args.device)
    start = time.perf_counter()
    result: dict[str, Any] = {"ddp": plain_vs_ddp(args)}
    print("plain vs DDP:", result["ddp"])
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"fairdefense-dist-{os.getpid()}.txt"
    result["procs"] = scaling(args, out)
    print("processes:", result["procs"])
    result["traffic"] = traffic(args)
    print("traffic:", result["traffic"])
    text = render(args, result, (time.perf_counter() - start) / 60, info)
    print(text)
    if args.write:
        replace_section(DOCS / "benchmarks.md", f"distributed-{args.device}-{args.workload}", text)


if __name__ == "__main__":
    main()
