"""LoraConfig and its targets: what gets adapted, and clear errors for what cannot be."""
import pytest
from torch import nn

import funclora as fl


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Sequential(nn.Linear(4, 4), nn.Dropout(), nn.Linear(4, 2)))


def test_all_selects_every_linear_and_conv2d_in_model_order():
    assert fl.find_targets(_model(), fl.LoraConfig(targets=fl.ALL)) == ["0", "3.0", "3.2"]


def test_patterns_select_only_adaptable_modules_and_names_may_be_exact():
    model = _model()
    assert fl.find_targets(model, fl.LoraConfig(targets=("3.*",))) == ["3.0", "3.2"]
    assert fl.find_targets(model, fl.LoraConfig(targets=("3.2", "0"))) == ["0", "3.2"]
    assert fl.find_targets(model, fl.LoraConfig(targets="3.0")) == ["3.0"]


@pytest.mark.parametrize("targets, message", [
    (("4.*",), "'4.\\*' matches no Linear or Conv2d"),
    (("1",), "'1' is a ReLU; LoRA here adapts nn.Linear and nn.Conv2d"),
    (("3.22",), "'3.22' is not a module of Sequential; did you mean"),
])
def test_bad_targets_are_refused_with_the_reason(targets, message):
    with pytest.raises(ValueError, match=message):
        fl.find_targets(_model(), fl.LoraConfig(targets=targets))


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, "rank must be an integer >= 1"),
    ({"rank": 2.5}, "rank must be an integer >= 1"),
    ({"alpha": -1}, "alpha must be"),
    ({"init": "xavier"}, "init must be one of"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"targets": ()}, "targets must be non-empty"),
    ({"rank_pattern": {"0": 0}}, r"rank_pattern\['0'\] must be an integer"),
])
def test_invalid_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fl.LoraConfig(**kwargs)


def test_alpha_defaults_to_rank_so_the_scale_is_one():
    assert fl.LoraConfig(rank=16).scale_for("any") == 1.0
    assert fl.LoraConfig(rank=16, alpha=32).scale_for("any") == 2.0
    assert fl.LoraConfig(rank=16, alpha=32, use_rslora=True).scale_for("any") == 8.0


def test_patterns_override_rank_and_alpha_per_layer_exact_names_first():
    cfg = fl.LoraConfig(rank=4, rank_pattern={"3.*": 2, "3.2": 8}, alpha_pattern={"0": 12})
    assert [cfg.rank_for(n) for n in ("0", "3.0", "3.2")] == [4, 2, 8]
    assert [cfg.scale_for(n) for n in ("0", "3.0", "3.2")] == [3.0, 2.0, 0.5]


def test_config_is_immutable_hashable_and_round_trips_through_json():
    cfg = fl.LoraConfig(rank=4, alpha=8, targets=("a.*", "b"), rank_pattern={"b": 2}, use_rslora=True)
    with pytest.raises(AttributeError):
        cfg.rank = 5
    assert hash(cfg) == hash(fl.LoraConfig.from_json(cfg.to_json()))
    assert fl.LoraConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown LoraConfig fields"):
        fl.LoraConfig.from_json('{"rank": 4, "fancy": true}')


def test_a_pattern_that_matches_nothing_names_the_first_four_adaptable_modules():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(ValueError) as excinfo:
        fl.find_targets(model, fl.LoraConfig(targets=("x*",)))
    assert str(excinfo.value) == ("target pattern 'x*' matches no Linear or Conv2d module of Sequential; "
                                  "adaptable modules are named like ['0', '1', '2', '3']")


def test_to_json_writes_the_patterns_as_json_objects_in_their_order_of_precedence():
    import json

    cfg = fl.LoraConfig(rank=2, rank_pattern={"b*": 3, "a": 4}, alpha_pattern={"a": 1.5})
    fields = json.loads(cfg.to_json())
    assert list(fields["rank_pattern"].items()) == [("b*", 3), ("a", 4)]  # as PEFT writes them
    assert fields["alpha_pattern"] == {"a": 1.5}
    assert fl.LoraConfig.from_json(cfg.to_json()) == cfg
