"""What to adapt and how: `LoraConfig` and resolving its targets against a model.

>>> import torch, funclora as fl
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> fl.find_targets(model, fl.LoraConfig(rank=4))          # "*": every Linear and Conv2d
['0', '2']
>>> fl.LoraConfig(rank=4, alpha=8).scale_for("2")          # alpha / rank
2.0
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

__all__ = ["ALL", "ADAPTABLE", "LoraConfig", "find_targets", "is_pattern"]

ALL: tuple[str, ...] = ("*",)
"""Shorthand target: every nn.Linear and nn.Conv2d (a pattern only ever selects those)."""

ADAPTABLE = (nn.Linear, nn.Conv2d)
INITS = ("gaussian", "kaiming")


def is_pattern(target: str) -> bool:
    return any(c in target for c in "*?[")


def _lookup(pairs: tuple[tuple[str, float], ...], name: str):
    """Exact name first, then the first fnmatch pattern that matches, else None."""
    exact = [v for k, v in pairs if k == name]
    return exact[0] if exact else next((v for k, v in pairs if fnmatchcase(name, k)), None)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scale, targets and init of a LoRA adapter; immutable and JSON-serialisable.

    targets: module names or fnmatch patterns over `model.named_modules()`; a pattern selects
        the Linear and Conv2d modules it matches, `ALL` ("*") selects every one.
    alpha: defaults to `rank`, i.e. scale alpha/rank = 1.
    init: how A is drawn ("gaussian": normal with standard deviation 1/rank, as PEFT's
        "gaussian"; "kaiming": PEFT's default, uniform within 1/sqrt(fan_in)); B is always zero.
    rank_pattern / alpha_pattern: per-layer overrides (name or pattern -> value), as in PEFT;
        stored as tuples of (key, value) pairs so that the config stays hashable.
    use_rslora: scale alpha/sqrt(rank) instead of alpha/rank (rank-stabilised LoRA).
    """

    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = ALL
    init: str = "gaussian"
    dropout: float = 0.0
    rank_pattern: Mapping[str, int] | tuple[tuple[str, int], ...] = ()
    alpha_pattern: Mapping[str, float] | tuple[tuple[str, float], ...] = ()
    use_rslora: bool = False

    def __post_init__(self):
        _check_types(self)
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        rank_pattern, alpha_pattern = dict(self.rank_pattern), dict(self.alpha_pattern)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"targets must be non-empty module names or patterns, got {self.targets!r}")
        _check_rank("rank", self.rank)
        for key, r in rank_pattern.items():
            _check_rank(f"rank_pattern[{key!r}]", r)
        alpha = float(self.rank if self.alpha is None else self.alpha)
        for key, a in {"alpha": alpha, **{f"alpha_pattern[{k!r}]": v for k, v in alpha_pattern.items()}}.items():
            if not (math.isfinite(a) and a > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {a!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass normalisation)
        set_("targets", targets)
        set_("alpha", alpha)
        set_("rank_pattern", tuple(rank_pattern.items()))
        set_("alpha_pattern", tuple((k, float(v)) for k, v in alpha_pattern.items()))

    def rank_for(self, name: str) -> int:
        r = _lookup(self.rank_pattern, name)
        return self.rank if r is None else r

    def alpha_for(self, name: str) -> float:
        a = _lookup(self.alpha_pattern, name)
        return self.alpha if a is None else a

    def scale_for(self, name: str) -> float:
        """alpha / rank for layer `name` (alpha / sqrt(rank) with use_rslora)."""
        r = self.rank_for(name)
        return self.alpha_for(name) / (math.sqrt(r) if self.use_rslora else r)

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(rank_pattern=dict(self.rank_pattern), alpha_pattern=dict(self.alpha_pattern))
        return json.dumps(fields)  # not sort_keys: the order of patterns is their precedence

    @classmethod
    def from_json(cls, text: str) -> "LoraConfig":
        """The config `to_json` wrote; every field must be there (a default could change the output)."""
        try:
            fields = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config is not valid JSON ({e})") from None
        if not isinstance(fields, dict):
            raise ValueError(f"config must be a JSON object of LoraConfig fields, got {type(fields).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(fields) - set(names)
        if unknown:
            raise ValueError(f"unknown LoraConfig fields {sorted(unknown)} (written by a newer funclora?)")
        missing = [n for n in names if n not in fields]
        if missing:
            raise ValueError(f"config lacks fields {missing}; a default there could change the adapter's "
                             f"output, so it is not guessed")
        return cls(**fields)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _pairs(what: str, value, check) -> None:
    """A Mapping or a sequence of (str, value) pairs, each value passing `check`."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in value):
        items = [tuple(p) for p in value]
    else:
        raise ValueError(f"{what} must be a mapping from layer names or patterns to values, got {value!r}")
    for key, v in items:
        if not (isinstance(key, str) and key):
            raise ValueError(f"{what} keys must be non-empty layer names or patterns, got {key!r}")
        check(f"{what}[{key!r}]", v)


def _check_number(what: str, x) -> None:
    if not _is_number(x):
        raise ValueError(f"{what} must be a number, got {x!r} ({type(x).__name__})")


def _check_types(cfg: "LoraConfig") -> None:
    """Every field's type, strictly: a string "false" is not False, "8" is not 8."""
    if not (isinstance(cfg.targets, str) or (isinstance(cfg.targets, (tuple, list))
                                            and all(isinstance(t, str) for t in cfg.targets))):
        raise ValueError(f"targets must be a module name or a list of names/patterns, got {cfg.targets!r}")
    if cfg.alpha is not None:
        _check_number("alpha", cfg.alpha)
    if not isinstance(cfg.init, str):
        raise ValueError(f"init must be one of {INITS}, got {cfg.init!r}")
    _check_number("dropout", cfg.dropout)
    _pairs("rank_pattern", cfg.rank_pattern, _check_rank)
    _pairs("alpha_pattern", cfg.alpha_pattern, _check_number)
    if not isinstance(cfg.use_rslora, bool):
        raise ValueError(f"use_rslora must be true or false, got {cfg.use_rslora!r} ({type(cfg.use_rslora).__name__})")


def _check_rank(what: str, r) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {r!r}")


def find_targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Names of the modules `cfg` adapts, in the model's order; ValueError for a bad target."""
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for target in cfg.targets:
        if is_pattern(target):
            hits = {n for n, m in modules.items() if fnmatchcase(n, target) and isinstance(m, ADAPTABLE)}
            if not hits:
                raise ValueError(
                    f"target pattern {target!r} matches no Linear or Conv2d module of "
                    f"{type(model).__name__}; adaptable modules are named like {_examples(modules)}")
            chosen |= hits
        elif target not in modules:
            close = difflib.get_close_matches(target, list(modules), n=3)
            hint = f"did you mean {close}?" if close else f"modules are named like {_examples(modules)}"
            raise ValueError(f"target {target!r} is not a module of {type(model).__name__}; {hint}")
        elif not isinstance(modules[target], ADAPTABLE):
            raise ValueError(
                f"target {target!r} is a {type(modules[target]).__name__}; LoRA here adapts "
                f"nn.Linear and nn.Conv2d (and their subclasses) only")
        else:
            chosen.add(target)
    return [n for n in modules if n in chosen]


def _examples(modules: Mapping[str, nn.Module]) -> list[str]:
    return [n for n, m in modules.items() if isinstance(m, ADAPTABLE)][:4]
