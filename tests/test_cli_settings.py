"""The command line reaches every training setting: ``train --set``, the shared dry run, and
``plugins NAME`` listing a plugin's options."""
import json
from dataclasses import dataclass, field

import pytest

import fairdefense
from fairdefense.cli import main
from fairdefense.cli.plugins import plugin_options

FAST = ["--epochs", "1", "--attack-steps", "1", "--batch-size", "512", "--no-progress", "--device", "cpu"]


def dry_run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_set_reaches_settings_without_a_flag(capsys):
    config = dry_run_json(
        capsys, "train", "--set", "momentum=0.5", "--set", "weight_decay=0.001", "--set", "milestones=[0.3, 0.6]",
        "--set", "gamma=0.2", "--set", "val_steps=3", "--set", 'eval_attacks=["pgd5", "cw5"]', "--set", "eval_every=2",
        "--set", "eps=1/10",
    )
    assert config["momentum"] == 0.5 and config["weight_decay"] == 0.001
    assert config["milestones"] == [0.3, 0.6] and config["gamma"] == 0.2 and config["val_steps"] == 3
    assert config["eval_attacks"] == ["pgd5", "cw5"] and config["eval_every"] == 2
    assert config["eps"] == pytest.approx(0.1) and config["eps_step"] == pytest.approx(0.025)  # eps/4 follows --set eps


def test_set_goes_over_a_recipe_as_flags_do(capsys):
    config = dry_run_json(capsys, "train", "--recipe", "cfa-cifar10-prn18", "--set", "gamma=0.5", "--epochs", "3")
    assert config["gamma"] == 0.5 and config["epochs"] == 3 and config["plugins"] == ["cfa"]


def test_train_and_recipes_print_the_same_dry_run(capsys):
    settings = ["--set", "epochs=7", "--set", "lr=0.05"]
    via_train = dry_run_json(capsys, "train", "--recipe", "faal-at-cifar10-prn18", *settings)
    via_recipes = dry_run_json(capsys, "recipes", "faal-at-cifar10-prn18", *settings)
    assert via_train == via_recipes and via_train["epochs"] == 7 and via_train["lr"] == 0.05
    assert main(["train", "--set", "epochs=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# fairdefense train --dry-run: the resolved training config\n") and "\nepochs = 7\n" in out


def test_set_errors_name_the_problem(capsys):
    assert main(["train", "--set", "momentun=0.9", *FAST]) == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) ['momentun']" in err and "momentum" in err
    assert main(["train", "--set", "epochs", *FAST]) == 2
    assert "must look like KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--epochs", "2", "--set", "epochs=3", "--dry-run"]) == 2
    assert "given both as a flag and with --set" in capsys.readouterr().err


def test_set_values_reach_the_trainer(tmp_path):
    assert main(["train", *FAST, "--set", "momentum=0.3", "--set", 'eval_attacks=["pgd2"]', "--out", str(tmp_path)]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert config["momentum"] == 0.3 and list(line["test"]["robust_acc"]) == ["pgd2"]


def test_plugins_name_lists_options_with_types_defaults_and_help(capsys):
    assert main(["plugins", "faal"]) == 0
    out = capsys.readouterr().out
    assert "options (-o faal.OPTION=VALUE):" in out
    assert "r: float = 0.5" in out and "radius of the KL ball around uniform class weights" in out
    assert "late_epoch: int | None = None" in out
    assert main(["plugins", "fa"]) == 0  # a filter, not a name: no options
    assert "options" not in capsys.readouterr().out


def test_option_help_from_metadata_and_docstring():
    class Demo(fairdefense.FairnessPlugin):
        name = "demo"

        @dataclass
        class Options:
            """Demo options.

            ``alpha``/``beta``: two weights,
            described on two lines.
            ``gamma``: ignored, metadata wins.
            """

            alpha: float = 1.0
            beta: float = 2.0
            gamma: int = field(default=3, metadata={"help": "from metadata"})
            delta: bool = False
            radii: list = field(default_factory=lambda: [1, 2])

    options = {o.name: o for o in plugin_options(Demo)}
    assert options["alpha"].help == options["beta"].help == "two weights, described on two lines."
    assert (options["gamma"].type, options["gamma"].default, options["gamma"].help) == ("int", 3, "from metadata")
    assert options["delta"].help == "" and options["delta"].type == "bool"
    assert options["radii"].default == [1, 2]
    assert plugin_options(object) == []
