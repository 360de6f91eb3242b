"""The command line: train, evaluate, plugins, errors, and the third-party plugin path."""
import json
import os
import subprocess
import sys
from pathlib import Path


import fairdefense
from fairdefense.cli import main
from fairdefense.cli.train import parse_plugin_options

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--attack-steps", "1", "--batch-size", "512", "--no-progress", "--device", "cpu"]


def test_train_from_the_command_line(tmp_path, capsys):
    assert main(["train", *FAST, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Per-class accuracy" in out and "Fairness summary" in out and "pgd20 robust error" in out
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert line["epoch"] == 1 and len(line["test"]["robust_acc"]["pgd20"]) == 10


def test_resume_from_the_command_line_extends_a_run(tmp_path, capsys):
    assert main(["train", *FAST, "--out", str(tmp_path)]) == 0
    assert main(["train", "--resume", str(tmp_path / "last.pt"), "--epochs", "2", "--no-progress"]) == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_unknown_plugin_is_a_clear_error(capsys):
    assert main(["train", "--plugin", "cfaa", *FAST]) == 2
    err = capsys.readouterr().err
    assert "unknown plugin 'cfaa'" in err and "Did you mean 'cfa'" in err


def test_plugin_options_are_parsed_and_checked(capsys):
    assert parse_plugin_options(["cfa.lambda1=0.5", "cfa.begin=3", "bat.alpha=2"]) == {
        "cfa": {"lambda1": "0.5", "begin": "3"}, "bat": {"alpha": "2"}}
    assert main(["train", "-o", "lambda1=0.5", *FAST]) == 2
    assert "must look like PLUGIN.KEY=VALUE" in capsys.readouterr().err


def test_eps_beyond_the_input_range_is_refused(capsys):
    assert main(["train", "--eps", "2", *FAST]) == 2
    assert "not smaller than the input range" in capsys.readouterr().err


def test_plugins_lists_name_version_distribution_hooks(capsys):
    assert main(["plugins", "bat"]) == 0
    out = capsys.readouterr().out
    assert f"bat  {fairdefense.__version__}  (fairdefense)" in out and "hooks:" in out


def test_third_party_plugin_package_installs_and_trains(tmp_path):
    """pip-install examples/fairdefense-example-plugin and train with it by name."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(ROOT / "examples" / "fairdefense-example-plugin")],
        check=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), env_path()]))
    listing = subprocess.run([sys.executable, "-m", "fairdefense.cli", "plugins", "upweight"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "upweight-weak  0.1.0  (fairdefense-example-plugin)" in listing
    run = subprocess.run(
        [sys.executable, "-m", "fairdefense.cli", "train", "--plugin", "upweight-weak", "-o", "upweight-weak.temperature=0.2",
         *FAST[:-2], "--epochs", "2", "--out", str(tmp_path / "run")],
        env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    state = json.loads((tmp_path / "run" / "config.json").read_text())
    assert state["plugins"] == ["upweight-weak"] and state["plugin_options"] == {"upweight-weak": {"temperature": 0.2}}


def env_path() -> str:
    return os.environ.get("PYTHONPATH", "")


def test_recipe_dry_run_prints_the_resolved_config_with_overrides(capsys):
    assert main(["train", "--recipe", "cfa-cifar10-prn18", "--epochs", "100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert 'dataset = "cifar10"' in out and "epochs = 100" in out and 'plugins = ["cfa"]' in out
    assert "eps_step = " in out  # resolved, not left unset


def test_fine_tuning_recipe_without_init_is_a_clear_error(capsys):
    assert main(["train", "--recipe", "frl-rwrm-cifar10-prn18", "--no-progress"]) == 2
    assert "--init" in capsys.readouterr().err
