"""Data-parallel training (gloo, 2 CPU processes) trains what one process trains.

One spawned group of 2 processes runs every strategy for 2 epochs, an interrupted and
resumed run and a NaN on one rank; the parent runs the same in one process and
compares. A second group loses a rank; a torchrun group restarts after a crash.

Tolerance of the weight comparison: the 2-process gradient is the sum of two
shard gradients, each a float32 sum over half the batch, where one process sums
over the whole batch at once; the same numbers in another order. Rounding differs
by a few float32 ulps (1.2e-7 relative) per step, and 2 epochs of 4 steps compound
it: the largest difference measured over all cases is 6e-8 (weights of order 0.1).
The tolerance (atol 1e-6, rtol 1e-5) leaves a margin of 15x for other machines and
BLAS builds and sits far below the effect of a wiring error (FAAL's margin sums taken
over the local batch, or random starts drawn for the local batch, moved the weights by
more than 2e-5 when tried).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

import fairdefense
from fairdefense import FairnessPlugin, NonFiniteLossError, TrainConfig, Trainer
from fairdefense import distributed
from fairdefense.attacks import global_batch
from fairdefense.checkpoint import load_checkpoint
from fairdefense.sharding import GlobalBatchSampler

NAMES = ["a", "b", "c"]
#: 73 samples: 61 train + 12 validation (4 per class) with a validation split, so with
#: batches of 20 the last global batch has 1 sample (rank 1 gets an empty share) or 13.
N_SAMPLES = 73
COMMON = dict(epochs=2, batch_size=20, attack_steps=2, eps=0.1, lr=0.05, schedule="constant", device="cpu",
              val_size=4, eval_attacks=("pgd2",), log_every=2, seed=3)
CASES = {
    "at": ({}, []),
    "trades": ({"objective": "trades"}, []),
    "faal": ({}, ["faal"]),
    "frl": ({}, ["frl"]),
    "cfa": ({"plugin_options": {"cfa": {"begin": 1}}}, ["cfa"]),
    "bat": ({}, ["bat"]),
    "wat": ({}, ["wat"]),
    "ema": ({"select_best": True}, ["ema"]),
    "awp": ({}, ["awp"]),
    "dafa": ({"objective": "trades", "plugin_options": {"dafa": {"tau": 1}}}, ["dafa"]),  # weights from epoch 1's stats
}
ATOL, RTOL = 1e-6, 1e-5


def data(n: int = N_SAMPLES, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = (0.5 + 0.25 * (torch.rand(n, 1, 4, 4, generator=g) - 0.5) + 0.15 * (y.view(-1, 1, 1, 1) - 1)).clamp(0, 1)
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


class Interrupt(FairnessPlugin):
    """Stops training (Ctrl-C) at the start of epoch ``at``."""

    name = "interrupt"

    @dataclass
    class Options:
        at: int = -1

    def on_epoch_start(self, epoch):
        if epoch.epoch == self.options.at:
            raise KeyboardInterrupt


class ProbSums(FairnessPlugin):
    """Keeps every epoch's ``ClassStats.robust_prob_sums`` as the hook receives it (changes nothing)."""

    name = "prob-sums"

    def __init__(self) -> None:
        super().__init__()
        self.sums: list[torch.Tensor] = []

    def on_epoch_end(self, epoch, train_stats):
        self.sums.append(train_stats.robust_prob_sums.cpu().clone())


class Poisoned(TensorDataset):
    """Returns NaN inputs while ``poison`` is set."""

    poison = False

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return (x * float("nan") if self.poison else x), y


class PoisonRank1(FairnessPlugin):
    """Bad data on rank 1 only, in batch 2 of epoch 1 (batches are read one at a time, no workers)."""

    name = "poison-rank1"

    def __init__(self, data: Poisoned) -> None:
        super().__init__()
        self.data = data

    def reweight(self, batch):
        self.data.poison = distributed.rank() == 1 and batch.epoch == 0 and batch.index == 0


class DieOnRank1(FairnessPlugin):
    """Rank 1 dies (as if killed) at its second batch."""

    name = "die-on-rank1"

    def reweight(self, batch):
        if distributed.rank() == 1 and batch.index == 1:
            os._exit(3)


def trainer(case: str, run_dir: Path | None, extra_plugins=(), train=None, **settings) -> Trainer:
    options, plugins = CASES[case]
    config = TrainConfig(**{**COMMON, **options, **settings})
    return Trainer(model(), train or data(), NAMES, config, list(plugins) + list(extra_plugins),
                   test_data=data(31, seed=1), run_dir=run_dir, progress=False)


def summary(trainer_: Trainer, result: fairdefense.TrainResult) -> dict:
    return {"weights": {k: v.clone() for k, v in result.model.state_dict().items()},
            "eval": {k: v.clone() for k, v in result.eval_model.state_dict().items()},
            "history": result.history, "best_epoch": result.best_epoch}


def art_weights() -> dict:
    """FAAL through the ART adapter, 2 epochs: the user's module's weights afterwards."""
    from art.estimators.classification import PyTorchClassifier

    from fairdefense.art import FairAdversarialTrainer

    net = model()
    clf = PyTorchClassifier(net, nn.CrossEntropyLoss(), (1, 4, 4), 3, clip_values=(0.0, 1.0),
                            optimizer=torch.optim.SGD(net.parameters(), lr=0.05))
    x, y = data().tensors
    FairAdversarialTrainer(clf, plugins=["faal"], eps=0.1, eps_step=0.025, max_iter=2, progress=False).fit(
        x.numpy(), y.numpy(), nb_epochs=2, batch_size=20)
    return {k: v.clone() for k, v in net.state_dict().items()}


def run_case(case: str, root: Path) -> dict:
    """One case's summary and the class-probability sums its plugins received, per epoch."""
    sums = ProbSums()
    return {**summary(*fit(trainer(case, root / case, [sums]))), "prob_sums": sums.sums}


def run_all(root: Path) -> dict:
    """Every case, the ART adapter, the interrupted + resumed run and the NaN run, in this process's group."""
    out = {case: run_case(case, root) for case in CASES}
    out["art"] = art_weights()
    interrupted = trainer("at", root / "resumed", [Interrupt(at=1)])
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = trainer("at", root / "resumed", [Interrupt()])
    resumed.restore(root / "resumed" / "last.pt")
    out["resumed"] = summary(*fit(resumed))
    try:
        poisoned = Poisoned(*data().tensors)
        trainer("at", None, [PoisonRank1(poisoned)], train=poisoned, log_every=3).fit()
        out["nan"] = None
    except NonFiniteLossError as exc:
        out["nan"] = (str(exc), exc.epoch, exc.batch)
    return out


def fit(t: Trainer):
    return t, t.fit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, port: int, timeout: float = 60.0) -> None:
    import datetime

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=timeout))


def _group_worker(rank: int, port: int, root: str) -> None:
    _init(rank, port)
    results = run_all(Path(root) / "ddp")
    torch.save(results, Path(root) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _dying_worker(rank: int, port: int, root: str) -> None:
    _init(rank, port, timeout=20.0)
    start = time.monotonic()
    try:
        trainer("at", None, [DieOnRank1()]).fit()
        message = "finished"
    except distributed.PeerFailureError as exc:
        message = str(exc)
    Path(root, f"dying{rank}.txt").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)  # a group that lost a peer cannot be torn down cleanly (gloo may abort); the CLI exits alike


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """(one-process results, rank 0 results, rank 1 results, root)."""
    root = tmp_path_factory.mktemp("dist")
    spawned = mp.start_processes(_group_worker, args=(free_port(), str(root)), nprocs=2, start_method="spawn",
                                 join=False)
    single = run_all(root / "single")  # meanwhile, in this process
    while not spawned.join():
        pass
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return single, ranks[0], ranks[1], root


@pytest.mark.parametrize("size, batch, world", [(61, 20, 2), (73, 20, 2), (10, 4, 3), (7, 7, 4), (2, 5, 3)])
def test_global_batches_are_dealt_in_the_one_process_order_without_loss_or_repeat(size, batch, world):
    def batches(rank, world_size):
        g = torch.Generator().manual_seed(5)
        return list(GlobalBatchSampler(size, batch, rank=rank, world_size=world_size, shuffle=True, generator=g))

    one = batches(0, 1)
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(5)).tolist()
    assert one == [perm[i:i + batch] for i in range(0, size, batch)]
    shares = [batches(r, world) for r in range(world)]
    windows = [GlobalBatchSampler(size, batch, rank=r, world_size=world).windows() for r in range(world)]
    for k, whole in enumerate(one):
        parts = [shares[r][k] for r in range(world)]
        assert sum(parts, []) == whole  # rank order = batch order: nothing dropped, nothing repeated
        assert max(map(len, parts)) - min(map(len, parts)) <= 1 and len(parts[0]) >= 1
        assert [windows[r][k] for r in range(world)] == [(sum(map(len, parts[:r])), len(whole)) for r in range(world)]


@pytest.mark.parametrize("norm, start", [("linf", "uniform"), ("linf", "normal"), ("l2", "uniform")])
def test_a_share_of_a_global_batch_gets_the_start_one_process_gives_it(norm, start):
    x = torch.rand(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    net = model()

    def start_of(inputs, labels):  # zero steps: the attack returns its (projected) start
        return fairdefense.pgd(net, inputs, labels, 0.1, 0.025, 0, norm=norm, random_start=start,
                               generator=torch.Generator().manual_seed(9))

    whole = start_of(x, y)
    with global_batch(2, 5):
        share = start_of(x[2:4], y[2:4])
    assert torch.equal(share, whole[2:4])
    assert not torch.equal(start_of(x[2:4], y[2:4]), whole[2:4])  # without the window: another start


def assert_close_states(a: dict, b: dict) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_one_process_weights(group, case):
    single, rank0, rank1, _ = group
    assert_close_states(single[case]["weights"], rank0[case]["weights"])
    assert_close_states(single[case]["eval"], rank0[case]["eval"])
    for name, value in rank0[case]["weights"].items():  # every rank holds the same model
        assert torch.equal(value, rank1[case]["weights"][name]), name
    for name, value in rank0[case]["eval"].items():  # EMA / FAWA identical on every rank
        assert torch.equal(value, rank1[case]["eval"][name]), name


def test_the_art_adapter_trains_the_one_process_weights_in_a_group(group):
    single, rank0, rank1, _ = group
    assert_close_states(single["art"], rank0["art"])
    for name, value in rank0["art"].items():
        assert torch.equal(value, rank1["art"][name]), name


@pytest.mark.parametrize("case", list(CASES))
def test_train_stats_validation_and_test_reports_equal_the_one_process_ones(group, case):
    single, rank0, _, _ = group
    for one, two in zip(single[case]["history"], rank0[case]["history"]):
        assert one["train"]["robust_acc"] == two["train"]["robust_acc"]
        assert one["train"]["clean_acc"] == two["train"]["clean_acc"]
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
        for split in ("val", "test"):
            assert (split in one) == (split in two)
            if split in one:
                assert one[split]["counts"] == two[split]["counts"]
                assert one[split]["clean_acc"] == two[split]["clean_acc"]
                assert one[split]["robust_acc"] == two[split]["robust_acc"]
                for k, v in one[split]["losses"].items():  # float32 per-sample losses (KL: a difference of logs)
                    assert v == pytest.approx(two[split]["losses"][k], rel=1e-5, abs=1e-6)
    assert single[case]["best_epoch"] == rank0[case]["best_epoch"]


@pytest.mark.parametrize("case", list(CASES))
def test_the_class_probability_sums_plugins_receive_are_global_and_the_one_process_ones(group, case):
    single, rank0, rank1, _ = group
    assert len(rank0[case]["prob_sums"]) == COMMON["epochs"] == len(single[case]["prob_sums"])
    for one, two, other in zip(single[case]["prob_sums"], rank0[case]["prob_sums"], rank1[case]["prob_sums"]):
        assert torch.equal(two, other)  # every rank receives the same (all-reduced) sums
        # each training sample adds one softmax row: all 73 (61 with a validation split), not one rank's share
        assert round(one.sum().item()) in (61, 73) and two.sum().item() == pytest.approx(one.sum().item(), abs=1e-4)
        torch.testing.assert_close(two, one, atol=ATOL, rtol=RTOL)


def test_dafa_weights_from_the_two_process_statistics_are_the_one_process_ones(group):
    single, rank0, rank1, _ = group
    logged = [run["dafa"]["history"][0]["plugins"]["dafa"] for run in (single, rank0, rank1)]
    weights = [torch.as_tensor(entry["weights"], dtype=torch.float64) for entry in logged]
    similarity = [torch.as_tensor(entry["similarity"], dtype=torch.float64) for entry in logged]
    assert "plugins" not in rank0["dafa"]["history"][1]  # computed once, after the warm-up epoch (tau=1)
    assert (weights[1] - 1).abs().max() > 1e-3  # the weights differ from uniform: epoch 2 tests their wiring
    sums = rank0["dafa"]["prob_sums"][0].double()
    torch.testing.assert_close(similarity[1], sums / sums.sum(1, keepdim=True), atol=ATOL, rtol=RTOL)  # mean softmax
    torch.testing.assert_close(similarity[1], similarity[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(weights[1], weights[0], atol=ATOL, rtol=RTOL)
    assert torch.equal(weights[1], weights[2])


def test_counts_cover_every_sample_once_with_an_empty_last_share(group):
    single, rank0, _, _ = group
    # 61 training samples in global batches of 20: the last has 1 sample, rank 1 gets none
    val = rank0["frl"]["history"][0]["val"]
    assert sum(val["counts"]) == 12
    assert sum(rank0["at"]["history"][-1]["test"]["counts"]) == 31


def test_resume_under_two_processes_is_exact_and_loads_in_one(group):
    single, rank0, _, root = group
    for name, value in rank0["at"]["weights"].items():
        assert torch.equal(value, rank0["resumed"]["weights"][name]), name
    state = load_checkpoint(root / "ddp" / "resumed" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    # a 2-process checkpoint continues in one process (other process count): same data order and starts
    one = trainer("at", root / "one-from-two", [Interrupt()])
    one.restore(root / "ddp" / "resumed" / "last.pt")
    assert one.epoch == 2 and one.history == rank0["resumed"]["history"]
    for name, value in one.model.state_dict().items():
        assert torch.equal(value, rank0["resumed"]["weights"][name]), name


def test_nan_on_one_rank_stops_both_with_the_same_error(group):
    single, rank0, rank1, _ = group
    assert single["nan"] is None  # the NaN is injected on rank 1 only
    assert rank0["nan"] == rank1["nan"]
    message, epoch, batch = rank0["nan"]
    assert (epoch, batch) == (1, 2) and "epoch 1, batch 2" in message


def test_a_dead_rank_makes_the_other_exit_with_a_clear_error(tmp_path):
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_dying_worker, args=(rank, port, str(tmp_path))) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert procs[1].exitcode == 3
    assert procs[0].exitcode == 0  # it caught the PeerFailureError
    seconds, message = (tmp_path / "dying0.txt").read_text().split("\n", 1)
    assert "another process stopped" in message and "last.pt" in message
    assert float(seconds) < 40


ELASTIC = textwrap.dedent('''
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from fairdefense import FairnessPlugin, distributed
    import test_distributed as t

    class CrashOnce(FairnessPlugin):
        name = "crash-once"

        def on_epoch_start(self, epoch):
            if epoch.epoch == 1 and distributed.restart_count() == 0 and distributed.rank() == 1:
                os._exit(1)

    trainer = t.trainer("at", {out!r}, [CrashOnce(), t.Interrupt()])
    result = trainer.fit()
    if distributed.is_main():
        torch.save({{"weights": result.model.state_dict(), "epochs": len(result.history)}}, {result!r})
''')


def test_torchrun_restart_resumes_from_last_checkpoint(group, tmp_path):
    _, rank0, _, _ = group
    script = tmp_path / "elastic.py"
    script.write_text(ELASTIC.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"),
                                     result=str(tmp_path / "result.pt")))
    # gloo's first connection of a restarted group is sometimes refused (connectFullMesh); it then waits for the
    # group timeout before torchrun restarts again: a short timeout and several restarts, as docs/distributed.md says
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIRDEFENSE_DIST_BACKEND": "gloo", "FAIRDEFENSE_DIST_TIMEOUT": "20"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "6",
         "--monitor-interval", "0.5", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=420)
    finally:  # never leave workers behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert re.search(r"restart \d: resumed from .*last.pt \(epoch 1\)", stdout), stdout
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    assert result["epochs"] == 2
    assert_close_states(rank0["at"]["weights"], result["weights"])


def test_python_m_fairdefense_is_the_command_torchrun_runs():
    out = subprocess.run([sys.executable, "-m", "fairdefense", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--sync-bn" in out.stdout and "--dist-timeout" in out.stdout
