"""Recipes: every built-in recipe resolves offline; overrides, errors, printing, the CLI,
and a fine-tuning chain (baseline recipe -> --init) run on the embedded digits."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from fairdefense import ConfigError, TrainConfig
from fairdefense.cli import main
from fairdefense.cli.recipes import parse_settings
from fairdefense.pluginhost import list_plugins
from fairdefense.recipes import (
    config_to_toml, list_recipes, load_recipe, recipe_config, resolve_offline, resolve_recipe,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES = [info.name for info in list_recipes()]
INSTALLED = {info.name for info in list_plugins() if info.error is None}


def require_plugins(name: str) -> None:
    missing = sorted(set(load_recipe(name).config.get("plugins", ())) - INSTALLED)
    if missing:
        pytest.skip(f"recipe {name!r} needs plugin(s) {missing}, which are not installed (yet)")


def test_the_briefs_recipes_exist():
    for name in ("pgdat-cifar10-prn18", "trades-cifar10-prn18", "frl-rwrm-cifar10-prn18", "bat-cifar10-rn18",
                 "faal-at-cifar10-wrn34", "cfa-cifar10-prn18"):
        assert name in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_resolves_offline(name):
    require_plugins(name)
    recipe = load_recipe(name)
    resolved = resolve_recipe(name)
    assert recipe.description and recipe.reproduces and recipe.results
    for key, value in recipe.config.items():
        if key == "plugins":
            assert resolved.plugins == tuple(value)
        elif key == "plugin_options":
            for plugin, options in value.items():
                assert {k: resolved.plugin_options[plugin][k] for k in options} == options
        else:
            assert getattr(resolved, key) == (tuple(value) if isinstance(value, list) else value), key
    assert resolved.eps == 8 / 255 and resolved.norm == "linf" and resolved.attack_steps == 10
    assert resolved.init in (None, recipe.config.get("init")) and resolved.dataset in ("cifar10", "cifar100")
    if recipe.starts_from:
        assert recipe.starts_from in RECIPES
        with pytest.raises(ConfigError, match=f"--init.*{recipe.starts_from}"):
            recipe_config(name, {})
    # the printed config loads back as a config that resolves to the same one
    assert resolve_offline(TrainConfig.from_dict(tomllib.loads(config_to_toml(resolved)))) == resolved


def test_plugins_requirements_are_applied():
    require_plugins("frl-rwrm-cifar10-prn18")
    frl = resolve_recipe("frl-rwrm-cifar10-prn18")
    assert (frl.objective, frl.beta, frl.val_steps, frl.val_size) == ("trades", 1.5, 20, 300)
    assert frl.plugin_options["frl"]["tau1"] == 0.05 and frl.plugin_options["frl"]["a1"] == 0.05
    require_plugins("bat-cifar10-rn18")
    bat = resolve_recipe("bat-cifar10-rn18")
    assert (bat.objective, bat.beta, bat.early_stop_extra_steps, bat.eps_step) == ("trades", 6.0, 1, 0.007)
    require_plugins("cfa-at-cifar10-prn18")
    cfa_at = resolve_recipe("cfa-at-cifar10-prn18")
    assert (cfa_at.objective, cfa_at.val_steps, cfa_at.val_size) == ("at", 10, 0.02)
    assert resolve_recipe("pgdat-cifar10-prn18").model == "preact_resnet18"


def test_schedules_hit_the_authors_epochs():
    """Milestones are fractions of the epochs: they must land on the code's epochs (0-based)."""
    def drops(name):
        c = load_recipe(name).config
        return [round(m * c["epochs"]) for m in c.get("milestones", [])]

    assert drops("bat-cifar10-rn18") == [74, 89, 99]  # BAT train.py: epoch >= 75, 90, 100 (1-based)
    assert drops("pgdat-cifar10-prn18") == [100, 150]
    assert drops("faal-at-cifar10-wrn34") == [1]  # lr 0.01, then 0.001 in the second epoch
    assert load_recipe("frl-rwrm-cifar10-prn18").config["schedule"] == "constant"


# The anchors of /work/shared/design/methods.md (percent; avg, worst).
ANCHORS = [
    ("pgdat-cifar10-prn18", "clean_error", (15.5, 33.8)),
    ("pgdat-cifar10-prn18", "pgd20/robust_error", (56.4, 82.7)),
    ("frl-rwrm-cifar10-prn18", "clean_error", (17.0, 26.8)),
    ("frl-rwrm-cifar10-prn18", "pgd20/robust_error", (52.7, 69.5)),
    ("bat-cifar10-rn18", "clean_error", (12.91, 25.90)),
    ("bat-cifar10-rn18", "pgd20/boundary_error", (31.57, 44.40)),
    ("bat-cifar10-rn18", "pgd20/robust_error", (44.48, 70.30)),
    ("pgdat-cifar10-rn18", "pgd20/robust_error", (52.90, 81.20)),
    ("pgdat-cifar10-wrn34", "autoattack/robust_acc", (52.46, 24.40)),
    ("faal-at-cifar10-wrn34", "autoattack/robust_acc", (50.81, 35.70)),
    ("pgdat-cifar10-prn18", "autoattack/robust_acc", (47.38, 12.90)),
    ("cfa-at-cifar10-prn18", "autoattack/robust_acc", (50.10, 24.40)),
    ("faal-at-cifar10-prn18", "autoattack/robust_acc", (49.10, 33.70)),
    ("pgdat-cifar10-prn18", "autoattack/robust_acc", (46.7, 20.1)),
    ("ema-at-cifar10-prn18", "autoattack/robust_acc", (49.6, 21.3)),
    ("cfa-at-cifar10-prn18", "autoattack/robust_acc", (50.1, 24.4)),
    ("trades-cifar10-prn18", "autoattack/robust_acc", (48.3, 21.7)),
    ("cfa-cifar10-prn18", "autoattack/robust_acc", (50.1, 26.5)),
]


@pytest.mark.parametrize("name,key,numbers", ANCHORS)
def test_paper_numbers_match_the_design_anchors(name, key, numbers):
    found = [r.metrics[key] for r in load_recipe(name).results if key in r.metrics]
    assert numbers in found


def test_overrides():
    require_plugins("frl-rwrm-cifar10-prn18")
    c = recipe_config("frl-rwrm-cifar10-prn18", {
        "epochs": 2, "lr": None, "init": "w.pt", "plugins": ["ema"], "plugin_options": {"frl": {"tau1": "0.07"}},
    })
    assert c.epochs == 2 and c.lr == 0.001 and c.init == "w.pt"
    assert c.plugins == ("frl", "ema")
    assert c.plugin_options["frl"] == {"variant": "rwrm", "tau1": "0.07", "tau2": 0.05, "beta": 1.5}
    assert load_recipe("frl-rwrm-cifar10-prn18").config["plugin_options"]["frl"]["tau1"] == 0.05  # not mutated
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['epoch'\].*'epochs'"):
        recipe_config("pgdat-cifar10-prn18", {"epoch": 3})


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'frl-rwrm-cifar10-prn18'"):
        load_recipe("frl-rwrm-cifar10")


def test_recipe_file_by_path_and_its_checks(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('description = "d"\nreproduces = "r"\n[config]\ndataset = "digits"\nepochs = 1\n'
                    '[[results]]\nsource = "s"\n"cw20/robust_acc" = { avg = 50.0, worst = 30.0 }\n')
    recipe = load_recipe(str(good))
    assert recipe.name == "mine" and recipe.results[0].metrics == {"cw20/robust_acc": (50.0, 30.0)}
    assert resolve_recipe(str(good)).eps == 0.2  # the digits' default
    cases = {
        'description = "d"\nreproduces = "r"\nconfig = { epochz = 1 }\n': r"\[config\].*epochz",
        'description = "d"\nreproduces = "r"\ntitle = "x"\nconfig = {}\n': r"unknown keys \['title'\]",
        'description = "d"\nreproduces = "r"\nconfig = {}\n[[results]]\nsource = "s"\n'
        '"pgd/robust_acc" = { avg = 1, worst = 2 }\n': "not a report summary key",
        'description = "d"\nreproduces = "r"\nconfig = {}\n[[results]]\nclean_acc = { avg = 1, worst = 2 }\n':
            "needs a 'source'",
        'description = "d"\nreproduces = "r"\nconfig = {}\n[[results]]\nsource = "s"\nclean_acc = { avg = 1 }\n':
            "avg = ..., worst = ...",
        'description = "d"\nreproduces = \n': "not valid TOML",
    }
    for i, (text, error) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=error):
            load_recipe(str(path))


def test_parse_settings():
    assert parse_settings(["eps=8/255", "milestones=[0.5]", "init=runs/a/last.pt", "select_best=true",
                           "epochs=3", 'objective="trades"']) == {
        "eps": 8 / 255, "milestones": [0.5], "init": "runs/a/last.pt", "select_best": True, "epochs": 3,
        "objective": "trades"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_settings(["epochs"])


def test_cli_lists_and_resolves(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES) and "52.7/69.5" in out
    assert main(["recipes", "pgdat-cifar10-prn18"]) == 0
    out = capsys.readouterr().out
    assert "Table 2" in out and "46.7/20.1" in out and 'schedule = "multistep"' in out
    assert main(["recipes", "pgdat-cifar10-prn18", "--dry-run", "--json", "--set", "epochs=3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["epochs"] == 3 and data["objective"] == "at" and data["val_steps"] == 10
    assert main(["recipes", "pgdat-cifar10-prn18", "--dry-run", "--set", "lr=0.05"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text)["lr"] == 0.05
    assert main(["recipes", "nope", "--dry-run"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_fine_tuning_chain_on_digits(tmp_path):
    """pgdat baseline recipe -> its last.pt -> FRL recipe with --init, shrunk to the digits."""
    require_plugins("frl-rwrm-cifar10-prn18")
    from fairdefense.api import build_trainer

    small = {"dataset": "digits", "model": "small_cnn", "epochs": 1, "attack_steps": 1, "eps": 0.2,
             "eps_step": 0.05, "batch_size": 256, "device": "cpu", "eval_attacks": ["pgd2"]}
    base = recipe_config("pgdat-cifar10-prn18", {**small, "select_best": False, "out": str(tmp_path / "base")})
    base_result = build_trainer(base, progress=False).fit()
    weights = {k: v.clone() for k, v in base_result.model.state_dict().items()}

    tuned = recipe_config("frl-rwrm-cifar10-prn18", {**small, "val_size": 10, "init": str(tmp_path / "base" / "last.pt")})
    trainer = build_trainer(tuned, progress=False)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())
    result = trainer.fit()
    assert result.config.objective == "trades" and result.config.beta == 1.5 and result.config.lr == 0.001
    assert "val" in result.history[0] and result.history[0]["val"]["robust_acc"].keys() == {"pgd20"}
