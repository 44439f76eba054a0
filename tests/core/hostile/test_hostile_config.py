"""Hostile configs: every field of LoraConfig is typed strictly, in the constructor and in from_json.

A string "false" that counted as true changed the scale silently; a missing alpha that defaulted to
the rank changed the output 16x. Each input below is refused with a ValueError naming the field.
"""
import json
import math

import numpy as np
import pytest

import funclora as fl

BAD_FIELDS = [
    ("use_rslora", "false"), ("use_rslora", "no"), ("use_rslora", "true"), ("use_rslora", 0),
    ("use_rslora", 1), ("use_rslora", None), ("use_rslora", ""), ("use_rslora", []),
    ("rank", "8"), ("rank", 8.0), ("rank", 0), ("rank", -1), ("rank", True), ("rank", None),
    ("rank", [8]), ("rank", 2.5),
    ("alpha", "8"), ("alpha", True), ("alpha", math.nan), ("alpha", math.inf), ("alpha", -1),
    ("alpha", 0), ("alpha", [1]), ("alpha", {}),
    ("targets", 5), ("targets", None), ("targets", []), ("targets", [""]), ("targets", [5]),
    ("targets", ("a", 3)), ("targets", {"a": 1}), ("targets", b"x"),
    ("init", 3), ("init", None), ("init", "xavier"), ("init", ""),
    ("dropout", "0.1"), ("dropout", None), ("dropout", True), ("dropout", -0.1), ("dropout", 1.0),
    ("dropout", math.nan),
    ("rank_pattern", [1, 2]), ("rank_pattern", "a"), ("rank_pattern", 5), ("rank_pattern", {"a": "2"}),
    ("rank_pattern", {"a": 0}), ("rank_pattern", {"": 2}), ("rank_pattern", {3: 2}),
    ("rank_pattern", {"a": True}),
    ("alpha_pattern", [1]), ("alpha_pattern", {"a": "1"}), ("alpha_pattern", {"a": math.nan}),
    ("alpha_pattern", {"a": -1}), ("alpha_pattern", {"a": None}),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_a_badly_typed_field_is_refused_naming_it(field, value):
    with pytest.raises(ValueError, match=field if field != "targets" else "targets"):
        fl.LoraConfig(**{field: value})


def _json_value(value):
    """`value` as it comes back from JSON, or None if JSON cannot hold it as it is."""
    try:
        back = json.loads(json.dumps(value))
    except TypeError:
        return None
    return back if json.dumps(back) == json.dumps(value) else None


# What an edited adapter header can hold: tuples become lists, int keys strings (and are then fine).
JSON_BAD = [(f, v) for f, v in BAD_FIELDS if _json_value(v) is not None or v is None
            if not (f == "rank_pattern" and v == {3: 2})]


@pytest.mark.parametrize("field, value", JSON_BAD, ids=[f"{f}={v!r}" for f, v in JSON_BAD])
def test_the_same_field_in_json_is_refused_too(field, value):
    fields = json.loads(fl.LoraConfig().to_json())
    fields[field] = value
    text = json.dumps(fields)  # NaN and Infinity are written as such, and json.loads reads them back
    with pytest.raises(ValueError, match=field):
        fl.LoraConfig.from_json(text)


@pytest.mark.parametrize("field", [f.name for f in fl.LoraConfig.__dataclass_fields__.values()])
def test_a_config_missing_any_field_is_refused_rather_than_defaulted(field):
    fields = json.loads(fl.LoraConfig(rank=4, alpha=64).to_json())
    del fields[field]
    with pytest.raises(ValueError, match=f"lacks fields \\['{field}'\\]"):
        fl.LoraConfig.from_json(json.dumps(fields))


@pytest.mark.parametrize("text, message", [
    ("null", "JSON object"), ("[]", "JSON object"), ("5", "JSON object"), ('"rank"', "JSON object"),
    ("not json", "not valid JSON"), ("", "not valid JSON"), ("{", "not valid JSON"),
    ('{"rank": 4, "fancy": true}', "unknown LoraConfig fields"),
])
def test_json_that_is_no_config_object_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        fl.LoraConfig.from_json(text)


@pytest.mark.parametrize("kwargs", [
    {"use_rslora": True}, {"use_rslora": False}, {"alpha": 16}, {"alpha": np.float32(2.5)},
    {"targets": ["a", "b.*"]}, {"targets": "a"}, {"rank_pattern": {"a": 2}, "alpha_pattern": {"a": 3}},
    {"rank_pattern": (("a", 2),)}, {"dropout": 0}, {"alpha": None},
], ids=str)
def test_well_typed_configs_still_pass_and_round_trip(kwargs):
    cfg = fl.LoraConfig(**kwargs)
    assert fl.LoraConfig.from_json(cfg.to_json()) == cfg


def test_rslora_as_a_string_no_longer_changes_the_scale():
    assert fl.LoraConfig(rank=16, use_rslora=False).scale_for("x") == 1.0
    with pytest.raises(ValueError, match="use_rslora must be true or false, got 'false'"):
        fl.LoraConfig(rank=16, use_rslora="false")
