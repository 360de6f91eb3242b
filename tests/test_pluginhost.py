"""Plugin discovery, activation, validation at registration and of return values."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import fairdefense
from fairdefense import (
    FairnessPlugin,
    HookReturnError,
    LossWeights,
    Margins,
    PluginError,
    PluginHost,
    PluginNotFoundError,
    PluginOptionError,
    hookimpl,
)
from fairdefense.hookspecs import HOOK_NAMES


class Weigh(FairnessPlugin):
    name = "weigh"

    @dataclass
    class Options:
        factor: float = 2.0
        on: bool = True

    def reweight(self, batch, outputs):
        return LossWeights(robust=torch.full((len(batch.y),), self.options.factor))


class Other(FairnessPlugin):
    name = "other"

    def reweight(self, batch, outputs):
        return LossWeights(robust=torch.arange(len(batch.y), dtype=torch.float32), natural=torch.ones(len(batch.y)))


class FakeBatch:
    def __init__(self, n=3, c=4):
        self.y = torch.arange(n) % c
        self.x = torch.zeros(n, 2)
        self.num_classes = c
        self.model = nn.Linear(2, c)


def test_unknown_plugin_suggests_nearest_names():
    with pytest.raises(PluginNotFoundError, match="unknown plugin 'bta'.*Did you mean 'bat'"):
        PluginHost(["bta"])


def test_unknown_option_lists_valid_ones():
    with pytest.raises(PluginOptionError, match=r"no option 'factr'.*Did you mean 'factor'.*Valid options: factor, on"):
        Weigh(factr=1)
    with pytest.raises(PluginOptionError, match="option 'on' expects a boolean"):
        Weigh.from_options({"on": "maybe"})
    assert Weigh.from_options({"factor": "3", "on": "false"}).options == Weigh.Options(3.0, False)


def test_options_for_plugins_not_activated_are_refused():
    with pytest.raises(PluginOptionError, match="not activated"):
        PluginHost([Weigh()], {"cfa": {"lambda1": "0.3"}})


def test_class_instead_of_instance_is_refused():
    with pytest.raises(PluginError, match="passed as a class; pass an instance instead, e.g. Weigh()"):
        PluginHost([Weigh])


def test_misspelled_hook_is_refused():
    class Typo(FairnessPlugin):
        name = "typo"

        def reweigth(self, batch, outputs):
            return None

    with pytest.raises(PluginError, match="'typo' defines 'reweigth'.*did you mean 'reweight'"):
        PluginHost([Typo()])

    class Marked:
        name = "marked"

        @hookimpl
        def remargn(self, batch):
            return None

    with pytest.raises(PluginError, match="marked.*remargn"):
        PluginHost([Marked()])


def test_hookimpl_argument_not_in_spec_is_refused():
    class Extra(FairnessPlugin):
        name = "extra"

        def reweight(self, batch, outputs, temperature):
            return None

    with pytest.raises(PluginError, match="extra.*temperature"):
        PluginHost([Extra()])


def test_two_plugins_on_an_exclusive_hook_are_refused():
    class M1(FairnessPlugin):
        name = "m1"

        def remargin(self, batch):
            return None

    class M2(M1):
        name = "m2"

    with pytest.raises(PluginError, match=r"\['m1', 'm2'\].*exclusive hook 'remargin'"):
        PluginHost([M1(), M2()])


def test_plugin_without_hooks_and_duplicates_are_refused():
    with pytest.raises(PluginError, match="implements no hook"):
        PluginHost([FairnessPlugin()])
    with pytest.raises(PluginError, match="activated twice"):
        PluginHost([Weigh(), Weigh()])


def test_reweight_results_multiply_elementwise_without_renormalising():
    host = PluginHost([Weigh(factor=3.0), Other()])
    natural, robust = host.reweight(FakeBatch(), outputs=None)
    torch.testing.assert_close(robust, torch.tensor([0.0, 3.0, 6.0]))
    torch.testing.assert_close(natural, torch.ones(3))


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.ones(2), r"has shape \(2,\), expected \(3,\)"),
        (torch.tensor([1.0, -1.0, 1.0]), "non-negative"),
        (torch.tensor([1.0, float("nan"), 1.0]), "non-finite"),
        ([1.0, 1.0, 1.0], "must be a torch.Tensor"),
    ],
)
def test_reweight_return_values_are_checked_and_name_the_plugin(value, message):
    class Bad(FairnessPlugin):
        name = "bad"

        def reweight(self, batch, outputs):
            return LossWeights(robust=value)

    with pytest.raises(HookReturnError, match=f"plugin 'bad', hook 'reweight'.*{message}"):
        PluginHost([Bad()]).reweight(FakeBatch(), outputs=None)


def test_remargin_return_values_are_checked():
    class Bad(FairnessPlugin):
        name = "bad"

        def remargin(self, batch):
            return Margins(eps=torch.tensor([0.1, 0.0, 0.1, 0.1]))

    with pytest.raises(HookReturnError, match="plugin 'bad', hook 'remargin'.*positive"):
        PluginHost([Bad()]).remargin(FakeBatch())


def test_extra_losses_add_up_and_must_be_finite_scalars():
    class A(FairnessPlugin):
        name = "a"

        def extra_loss(self, batch, outputs):
            return torch.tensor(1.5)

    class B(FairnessPlugin):
        name = "b"

        def extra_loss(self, batch, outputs):
            return torch.tensor([0.25])

    assert PluginHost([A(), B()]).extra_loss(FakeBatch(), None).item() == 1.75

    class C(FairnessPlugin):
        name = "c"

        def extra_loss(self, batch, outputs):
            return torch.tensor(float("inf"))

    with pytest.raises(HookReturnError, match="plugin 'c', hook 'extra_loss'.*not finite"):
        PluginHost([C()]).extra_loss(FakeBatch(), None)


def test_configure_conflicts_name_both_parties():
    class WantsTrades(FairnessPlugin):
        name = "wants-trades"

        def configure(self, config, run):
            return {"objective": "trades"}

    class WantsAT(FairnessPlugin):
        name = "wants-at"

        def configure(self, config, run):
            return {"objective": "at"}

    config = fairdefense.TrainConfig()
    with pytest.raises(PluginError, match="'wants-trades' and 'wants-at' need different values of 'objective'"):
        PluginHost([WantsTrades(), WantsAT()]).configure(config, None, explicit=set())
    with pytest.raises(PluginError, match="'wants-trades' requires objective='trades' but it was set to 'at'"):
        PluginHost([WantsTrades()]).configure(fairdefense.TrainConfig(objective="at"), None, explicit={"objective"})
    assert PluginHost([WantsTrades()]).configure(config, None, explicit=set()) == {"objective": "trades"}


def test_every_hook_has_a_contract_docstring():
    from fairdefense import hookspecs

    for hook in HOOK_NAMES:
        doc = getattr(hookspecs, hook).__doc__
        assert doc and "When:" in doc and "Returns:" in doc, hook


def test_list_plugins_reports_installed_strategies():
    infos = {info.name: info for info in fairdefense.list_plugins()}
    assert {"bat", "frl", "faal", "cfa"} <= set(infos)
    assert all(info.distribution == "fairdefense" for name, info in infos.items() if name in {"bat", "frl"})
    assert fairdefense.list_plugins("fa") == [i for i in infos.values() if "fa" in i.name]


def test_inactive_hooks_are_not_registered_and_free_exclusive_hooks():
    class Averager(FairnessPlugin):
        @dataclass
        class Options:
            average: bool = True

        def on_epoch_end(self, epoch, train_stats):
            return None

        def weights_to_evaluate(self, epoch):
            return None

        def inactive_hooks(self):
            return frozenset() if self.options.average else frozenset({"weights_to_evaluate"})

    first, second = Averager(average=False), Averager()
    first.name, second.name = "first", "second"
    host = PluginHost([first, second])
    assert [i.plugin_name for i in host._impls("weights_to_evaluate")] == ["second"]
    assert [i.plugin_name for i in host._impls("on_epoch_end")] == ["first", "second"]
    both = Averager()
    both.name = "both"
    with pytest.raises(PluginError, match="exclusive hook 'weights_to_evaluate'"):
        PluginHost([second, both])


# ------------------------------------------------------------ pluggy's hookimpl options
class Calls(FairnessPlugin):
    """Appends its name to a shared list when on_epoch_start is called."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def on_epoch_start(self, epoch):
        self.log.append(self.name)


class First(Calls):
    @hookimpl(tryfirst=True)
    def on_epoch_start(self, epoch):
        self.log.append(self.name)


class Last(Calls):
    @hookimpl(trylast=True)
    def on_epoch_start(self, epoch):
        self.log.append(self.name)


def test_tryfirst_runs_before_the_unmarked_in_activation_order():
    log = []
    host = PluginHost([Calls("a", log), First("f1", log), Calls("b", log), First("f2", log)])
    host.notify("on_epoch_start", epoch=None)
    assert log == ["f1", "f2", "a", "b"]  # pluggy alone would call f2, f1, b, a


def test_trylast_runs_after_the_unmarked_in_activation_order():
    log = []
    host = PluginHost([Last("l1", log), Calls("a", log), Last("l2", log), First("f", log), Calls("b", log)])
    host.notify("on_epoch_start", epoch=None)
    assert log == ["f", "a", "b", "l1", "l2"]


def test_markers_order_a_plain_hookimpl_object_too():
    log = []

    class Module:
        name = "module"

        @hookimpl(tryfirst=True)
        def on_epoch_start(self):
            log.append("module")

    PluginHost([Calls("a", log), Module()]).notify("on_epoch_start", epoch=None)
    assert log == ["module", "a"]


@pytest.mark.parametrize("option", ["wrapper", "hookwrapper"])
def test_wrappers_are_refused_naming_plugin_and_hook(option):
    class Wraps(FairnessPlugin):
        name = "wraps"

        @hookimpl(**{option: True})
        def reweight(self, batch, outputs):
            yield  # a valid pluggy wrapper: refused by fairdefense, not by pluggy

    with pytest.raises(PluginError, match=rf"plugin 'wraps', hook 'reweight': @hookimpl\({option}=True\) is not supported"):
        PluginHost([Wraps()])


def test_optionalhook_cannot_hide_a_name_that_is_no_hook():
    class Optional:
        name = "optional"

        @hookimpl(optionalhook=True)
        def reweigh(self, batch, outputs):
            return None

    with pytest.raises(PluginError, match="plugin 'optional', hook 'reweigh'.*never be called.*Did you mean 'reweight'"):
        PluginHost([Optional()])

    class OptionalReal(Weigh):
        name = "optional-real"

        @hookimpl(optionalhook=True)
        def reweight(self, batch, outputs):
            return LossWeights(robust=torch.full((len(batch.y),), 5.0))

    _, robust = PluginHost([OptionalReal()]).reweight(FakeBatch(), outputs=None)
    torch.testing.assert_close(robust, torch.full((3,), 5.0))


def test_specname_implements_the_named_hook_and_is_not_taken_for_a_typo():
    class Named(FairnessPlugin):
        name = "named"

        @dataclass
        class Options:
            active: bool = True

        @hookimpl(specname="reweight")
        def reweights(self, batch, outputs):  # one letter from the hook: not a typo, it is marked
            return LossWeights(robust=torch.full((len(batch.y),), 4.0))

        def inactive_hooks(self):
            return frozenset() if self.options.active else frozenset({"reweight"})

    _, robust = PluginHost([Named()]).reweight(FakeBatch(), outputs=None)
    torch.testing.assert_close(robust, torch.full((3,), 4.0))
    from fairdefense.pluginhost import _hooks_of

    assert _hooks_of(Named) == ("reweight",)  # what 'fairdefense plugins' lists
    with pytest.raises(PluginError, match="implements no hook"):  # inactive_hooks reads the hook's name
        PluginHost([Named(active=False)])


def test_the_contract_declares_no_firstresult_or_historic_hook():
    host = PluginHost([Weigh()])
    for hook in HOOK_NAMES:
        spec = getattr(host._pm.hook, hook).spec
        assert not spec.opts["firstresult"] and not spec.opts["historic"], hook


# ------------------------------------------------------------ logging from on_epoch_end
class Logs(FairnessPlugin):
    name = "logs"

    def on_epoch_end(self, epoch, train_stats):
        return {"epoch_seen": epoch.epoch, "weights": torch.tensor([0.5, 1.5]), "note": "ok"}


def test_on_epoch_end_values_are_collected_per_plugin_as_json():
    class Silent(FairnessPlugin):
        name = "silent"

        def on_epoch_end(self, epoch, train_stats):
            return None

    info = fairdefense.EpochInfo(3, 10, nn.Linear(2, 2), None, 0.1)
    logged = PluginHost([Silent(), Logs()]).on_epoch_end(info, None)
    assert logged == {"logs": {"epoch_seen": 3, "weights": [0.5, 1.5], "note": "ok"}}


@pytest.mark.parametrize("value, message", [(3.0, "expected None or a dict"), ({"model": nn.Linear(1, 1)}, "cannot log a Linear")])
def test_on_epoch_end_values_that_json_cannot_hold_are_refused(value, message):
    class Bad(FairnessPlugin):
        name = "bad"

        def on_epoch_end(self, epoch):
            return value

    with pytest.raises(HookReturnError, match=f"plugin 'bad', hook 'on_epoch_end'.*{message}"):
        PluginHost([Bad()]).on_epoch_end(None, None)


def test_trainer_writes_logged_values_into_the_epochs_metrics_line(tmp_path):
    import json

    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.rand(24, 4), torch.arange(24) % 2)
    config = fairdefense.TrainConfig(epochs=2, attack_steps=1, batch_size=24, device="cpu", eps=0.1)
    fairdefense.Trainer(nn.Linear(4, 2), data, ["a", "b"], config, [Logs()], run_dir=tmp_path, progress=False).fit()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # hooks count epochs from 0, metrics.jsonl counts completed epochs from 1
    assert [(line["epoch"], line["plugins"]["logs"]["epoch_seen"]) for line in lines] == [(1, 0), (2, 1)]
    assert lines[0]["plugins"]["logs"]["weights"] == [0.5, 1.5]


def test_list_filters_follow_one_rule():
    from fairdefense.listing import matches

    assert matches("preact_resnet18", "ResNet") and matches("wrn28_10", "wrn*") and matches("x", None)
    assert not matches("preact_resnet18", "resnet*") and not matches("bat", "fa")
    assert fairdefense.list_models("resnet") == fairdefense.list_models("*resnet*") == ["preact_resnet18", "resnet18"]
    names = [info.name for info in fairdefense.list_plugins("FA*")]
    assert names and all(name.startswith("fa") for name in names)
    assert [info.name for info in fairdefense.list_plugins("wa")] == ["wat"]
