"""Hugging Face PEFT adapter directories, both ways: `to_peft` writes one, `from_peft` reads one.

A PEFT LoRA directory is `adapter_model.safetensors` (tensors `base_model.model.<layer>.lora_A.weight`
and `.lora_B.weight`, the same shapes as funclora's A and B) plus `adapter_config.json`. Both are
plain formats, so this module never imports peft. Layers PEFT computes differently from funclora
(grouped or dilated convs, non-zero padding modes) are refused with the layer's name, as is every
PEFT feature funclora cannot represent (DoRA, embeddings, trained biases, other PEFT methods...).

>>> import os, tempfile, torch, funclora as fl
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))
>>> cfg = fl.LoraConfig(rank=2, rank_pattern={"2": 1})
>>> lora = fl.init_lora(model, cfg)
>>> directory = tempfile.mkdtemp()
>>> fl.to_peft(lora, cfg, directory, model=model)      # peft.PeftModel.from_pretrained(model, directory)
>>> sorted(os.listdir(directory))
['adapter_config.json', 'adapter_model.safetensors']
>>> lora2, cfg2 = fl.from_peft(directory, model=model)
>>> all(torch.equal(lora[n][p], lora2[n][p]) for n in lora for p in "AB"), cfg2.rank_for("2")
(True, 1)
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .config import LoraConfig, find_targets
from .io import TMP_SUFFIX, _alive, check_tensors, load, save, serialize, write_file
from .lora import Lora, check_lora

__all__ = ["to_peft", "from_peft", "peft_problem", "export_file", "import_dir",
           "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the user's model

# PEFT options funclora cannot represent: a truthy value is refused, naming the option.
UNSUPPORTED = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "a trained bias on lora_B (lora_bias)",
    "fan_in_fan_out": "transposed weights (fan_in_fan_out, for GPT-2 style Conv1D)",
    "modules_to_save": "fully trained extra modules (modules_to_save)",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices)",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "layer_replication": "replicated layers (layer_replication)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "megatron_config": "Megatron parallel layers (megatron_config)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
}
# Options that change nothing about a saved LoRA adapter's output (matching, bookkeeping, init-time
# settings). Any other option with a truthy value is refused: it may be a variant newer than this code.
HARMLESS = {
    "peft_type", "task_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision",
    "inference_mode", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules",
    "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "use_rslora", "bias",
    "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config",
    "megatron_core", "qalora_group_size", "ensure_weight_tying", "runtime_config",
}
# init_lora_weights values that leave the base model as it is (others rewrite it, e.g. PiSSA's residual).
INITS = {True: "kaiming", False: "kaiming", "gaussian": "gaussian", "eva": "kaiming", "orthogonal": "kaiming"}


def peft_problem(module: nn.Module) -> str | None:
    """Why PEFT 0.21 would compute a LoRA on `module` differently from funclora, or None if it agrees."""
    if not isinstance(module, nn.Conv2d):
        return None
    if module.groups > 1:
        return (f"groups={module.groups}: PEFT's lora_A spans all input channels, so its update is not "
                f"a grouped weight (and PEFT cannot merge it)")
    if any(d > 1 and k > 1 for d, k in zip(module.dilation, module.kernel_size)):
        return f"dilation={module.dilation}: PEFT's lora_A is undilated, its output has the wrong size"
    pads = module.padding != "valid" and (module.padding == "same" or any(module.padding))
    if module.padding_mode != "zeros" and pads:
        return (f"padding_mode={module.padding_mode!r}: PEFT's lora_A pads with zeros, so its "
                f"unmerged output differs from the merged one")
    return None


def to_peft(lora: Lora, cfg: LoraConfig, directory: str | os.PathLike, *, model: nn.Module,
            base_model_name_or_path: str | None = None) -> None:
    """Write `lora` as a PEFT LoRA adapter directory that `PeftModel.from_pretrained(model, directory)`
    loads exactly; `model` is the base it was made for (checked, and used to make names unambiguous).

    base_model_name_or_path: only a Hugging Face Hub id or local path (PEFT looks it up when it saves
    or auto-loads); leave it None for torchvision-style models.
    """
    check_lora(model, lora, cfg)
    modules = dict(model.named_modules())
    names = [n for n in find_targets(model, cfg) if n in lora]
    for name in names:
        if name == "":
            raise ValueError("layer '' (the root module): PEFT cannot adapt the model itself; "
                             "wrap it, e.g. nn.Sequential(model), and target '0'")
        problem = peft_problem(modules[name])
        if problem:
            raise ValueError(f"layer {name!r}: PEFT cannot represent this adapter: {problem}; "
                             f"leave the layer out of the targets to export the rest")
    check_tensors({n: lora[n] for n in names}, directory)
    config = _peft_config(cfg, names, list(modules), base_model_name_or_path)
    tensors = {f"{PREFIX}{name}.lora_{part}.weight": lora[name][part].detach().contiguous().cpu()
               for name in names for part in "AB"}
    write_folder(directory, {WEIGHTS_NAME: serialize(tensors, {"format": "pt"}),
                             CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode()})


REPLACEABLE = {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
"""What a PEFT adapter folder holds: a folder with only these (or empty) is replaced whole."""


def write_folder(directory: str | os.PathLike, files: Mapping[str, bytes]) -> None:
    """Write `files` as the folder `directory`, atomically: they are written into a temporary
    folder beside it, which is then renamed into place, so a failure (a full disk, Ctrl-C) never
    leaves weights without their config. An existing PEFT adapter folder is replaced; a folder
    holding anything else is refused (nothing of it is lost)."""
    directory = Path(directory)
    others = sorted(p.name for p in directory.iterdir() if p.name not in REPLACEABLE) \
        if directory.is_dir() else []
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder")
    if others:
        raise ValueError(f"{directory}: holds other files {others[:3]}; a PEFT adapter is written into a "
                         f"new folder or replaces a PEFT adapter folder, so choose another folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".{glob.escape(directory.name)}.*{TMP_SUFFIX}"):
        pid = stale.name[len(directory.name) + 2:-len(TMP_SUFFIX)].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}{TMP_SUFFIX}")
    old = directory.with_name(f".{directory.name}.{os.getpid()}.old{TMP_SUFFIX}")
    try:
        tmp.mkdir()
        for name, data in files.items():
            write_file(tmp / name, data)
        if directory.is_dir():
            os.rename(directory, old)
        os.rename(tmp, directory)
    except OSError as e:
        if old.exists() and not directory.exists():
            os.rename(old, directory)  # put the previous adapter back
        raise OSError(f"{directory}: cannot write it ({e.strerror or e})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _peft_config(cfg: LoraConfig, names: list[str], all_modules: list[str],
                 base_model_name_or_path: str | None) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank,
        "lora_alpha": _number(cfg.alpha),
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.use_rslora,
        "target_modules": _target_modules(names, all_modules),
        "rank_pattern": {_exact_key(n, names): cfg.rank_for(n) for n in names if cfg.rank_for(n) != cfg.rank},
        "alpha_pattern": {_exact_key(n, names): _number(cfg.alpha_for(n)) for n in names if cfg.alpha_for(n) != cfg.alpha},
        "init_lora_weights": "gaussian" if cfg.init == "gaussian" else True,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_dora": False,
        "lora_bias": False,
        "inference_mode": True,
    }


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _target_modules(names: list[str], all_modules: list[str]) -> list[str] | str:
    """A list of names where PEFT's list rule (name, or '.'-suffix of a module) selects exactly
    `names` in this model; else a regex, which PEFT fullmatches."""
    chosen = set(names)
    hit = lambda m: m in chosen or any(m.endswith("." + n) for n in chosen)  # noqa: E731
    if all(hit(m) == (m in chosen) for m in all_modules):
        return list(names)
    return "|".join(re.escape(n) for n in names)


def _peft_pattern_match(key: str, name: str) -> bool:
    """PEFT's rank_pattern/alpha_pattern rule (peft.utils.other.get_pattern_key)."""
    try:
        return re.match(rf"(.*\.)?({key})$", name) is not None
    except re.error:
        return False


def _exact_key(name: str, names: list[str]) -> str:
    """The most readable rank/alpha_pattern key that PEFT matches to `name` and to no other target."""
    for key in (name, re.escape(name), "^" + re.escape(name)):
        if [n for n in names if _peft_pattern_match(key, n)] == [name]:
            return key
    raise AssertionError(f"no exact PEFT pattern for {name!r}")  # '^' + escaped name always is one


def from_peft(directory: str | os.PathLike, model: nn.Module | None = None) -> tuple[Lora, LoraConfig]:
    """(lora, cfg) from a PEFT LoRA adapter directory on Linear and Conv2d layers.

    Ranks come from the tensors; targets, rank_pattern and alpha_pattern come out as exact layer
    names. With `model`, the adapter is also checked to fit it and to compute as it does in PEFT.
    """
    directory = Path(directory)
    config = _read_config(directory)
    where = directory / CONFIG_NAME
    _check_options(config, where)
    layers = _read_layers(directory / WEIGHTS_NAME)
    _check_types(config, where)
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    ranks, alphas = {}, {}
    for name, ab in layers.items():
        ranks[name] = ab["A"].shape[0]
        want = _peft_lookup(rank_pattern, name, r)
        if ranks[name] != want:
            raise ValueError(f"{directory}: layer {name!r} has rank {ranks[name]} in {WEIGHTS_NAME} but "
                             f"{CONFIG_NAME} gives it rank {want} (r / rank_pattern); the files disagree")
        alphas[name] = _peft_lookup(alpha_pattern, name, alpha)
    try:
        cfg = LoraConfig(
            rank=r, alpha=alpha, targets=tuple(layers), init=INITS[config.get("init_lora_weights", True)],
            dropout=config.get("lora_dropout", 0.0), use_rslora=config.get("use_rslora", False),
            rank_pattern={n: k for n, k in ranks.items() if k != r},
            alpha_pattern={n: a for n, a in alphas.items() if a != alpha})
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    check_tensors(layers, directory / WEIGHTS_NAME)
    if model is not None:
        try:
            check_lora(model, layers, cfg)
        except ValueError as e:
            raise ValueError(f"{directory}: {e}") from None
        modules = dict(model.named_modules())
        for name in layers:
            problem = peft_problem(modules[name])
            if problem:
                raise ValueError(f"{directory}: layer {name!r}: funclora cannot reproduce PEFT here: {problem}")
    return layers, cfg


def _check_types(config: dict, where: Path) -> None:
    """PEFT's fields, typed strictly: a string "false" is not False, and a pattern must compile."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    for key, ok, want in [("r", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
                          ("lora_alpha", number, "a number"), ("lora_dropout", number, "a number"),
                          ("use_rslora", lambda v: isinstance(v, bool), "true or false"),
                          ("rank_pattern", lambda v: v is None or isinstance(v, dict), "an object"),
                          ("alpha_pattern", lambda v: v is None or isinstance(v, dict), "an object")]:
        if key in config and not ok(config[key]):
            raise ValueError(f"{where}: {key} must be {want}, got {config[key]!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        for pattern in config.get(key) or {}:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{where}: {key} key {pattern!r} is not a valid regular expression ({e})") from None


def _peft_lookup(pattern: Mapping[str, float], name: str, default):
    return next((v for k, v in pattern.items() if _peft_pattern_match(k, name)), default)


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory (expected a PEFT adapter directory)")
    if not path.is_file():
        inner = sorted(p.parent.name for p in directory.glob(f"*/{CONFIG_NAME}"))
        hint = f"it holds adapters in subfolders {inner}: pass one of those" if inner else \
            "is it a PEFT adapter directory?"
        raise ValueError(f"{directory}: no {CONFIG_NAME}; {hint}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _check_options(config: dict, where: Path) -> None:
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ValueError(f"{where}: peft_type is {kind!r}; funclora reads LoRA adapters (peft_type 'LORA') only")
    for option, what in UNSUPPORTED.items():
        if config.get(option):
            raise ValueError(f"{where}: uses {what} = {config[option]!r}, which funclora cannot represent")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{where}: bias={config['bias']!r} trains biases, which funclora cannot represent "
                         f"(only bias='none' is)")
    init = config.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)) or init not in INITS:
        raise ValueError(f"{where}: init_lora_weights={init!r} changes the base model's weights (or is "
                         f"unknown); funclora reads adapters over an unchanged base: {sorted(map(str, INITS))}")
    unknown = {k: v for k, v in config.items() if k not in HARMLESS and k not in UNSUPPORTED and v}
    if unknown:
        raise ValueError(f"{where}: unknown PEFT options {unknown} (written by a newer peft?); "
                         f"funclora cannot tell whether it can represent them")


def _read_layers(path: Path) -> Lora:
    if not path.is_file():
        pickled = path.with_name("adapter_model.bin")
        why = (f"only {pickled.name} (a pickle, which funclora never loads); re-save it with "
               f"save_pretrained(..., safe_serialization=True)") if pickled.is_file() else "it is missing"
        raise ValueError(f"{path.parent}: no {WEIGHTS_NAME}: {why}")
    layers: Lora = {}
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            for key in fh.keys():
                name, part = _parse_key(key, path)
                layers.setdefault(name, {})[part] = fh.get_tensor(key)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if not layers:
        raise ValueError(f"{path}: holds no LoRA weights")
    for name, ab in layers.items():
        _check_shapes(name, ab, path)
    return layers


def _parse_key(key: str, path: Path) -> tuple[str, str]:
    match = re.fullmatch(rf"{re.escape(PREFIX)}(.+)\.lora_([AB])\.weight", key)
    if match:
        return match.group(1), match.group(2)
    layer = re.sub(r"^" + re.escape(PREFIX), "", key).rsplit(".lora_", 1)[0]
    for marker, what in [("lora_embedding_", "an Embedding (lora_embedding_A/B); funclora adapts Linear "
                                             "and Conv2d only"),
                         ("lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
                         ("lora_B.bias", "a trained bias on lora_B (lora_bias)")]:
        if marker in key:
            raise ValueError(f"{path}: layer {layer!r} uses {what}, which funclora cannot represent")
    raise ValueError(f"{path}: unexpected tensor {key!r}: not '{PREFIX}<layer>.lora_A.weight' / "
                     f"'.lora_B.weight' (a trained module, a bias, or another PEFT method?)")


def _check_shapes(name: str, ab: dict[str, torch.Tensor], path: Path) -> None:
    if set(ab) != {"A", "B"}:
        raise ValueError(f"{path}: layer {name!r} has only lora_{''.join(ab)}; it needs lora_A and lora_B")
    a, b = ab["A"].shape, ab["B"].shape
    kinds = {2: "Linear", 3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}
    if len(a) in (3, 5):
        raise ValueError(f"{path}: layer {name!r} is a {kinds[len(a)]} (lora_A {tuple(a)}); "
                         f"funclora adapts Linear and Conv2d only")
    if len(a) not in kinds or len(b) != len(a) or any(k != 1 for k in b[2:]):
        raise ValueError(f"{path}: layer {name!r}: lora_A {tuple(a)} / lora_B {tuple(b)} are not the "
                         f"shapes of a Linear or Conv2d LoRA")
    if b[1] != a[0]:
        groups = f"a grouped conv (groups={a[0] // b[1]})" if b[1] and a[0] % b[1] == 0 else "inconsistent"
        raise ValueError(f"{path}: layer {name!r}: lora_B {tuple(b)} does not take lora_A's rank {a[0]}: "
                         f"{groups}; PEFT's grouped-conv LoRA is not a grouped weight update, which "
                         f"funclora cannot represent")


def export_file(adapter_path: str | os.PathLike, directory: str | os.PathLike, model: nn.Module,
                base_model_name_or_path: str | None = None) -> None:
    """`funclora export ADAPTER --peft DIR`: a funclora adapter file to a PEFT directory."""
    lora, cfg = load(adapter_path)
    try:
        to_peft(lora, cfg, directory, model=model, base_model_name_or_path=base_model_name_or_path)
    except ValueError as e:
        raise ValueError(f"{adapter_path}: {e}") from None


def import_dir(directory: str | os.PathLike, out_path: str | os.PathLike, model: nn.Module | None = None,
               metadata: Mapping[str, str] | None = None) -> tuple[Lora, LoraConfig]:
    """`funclora import DIR --out ADAPTER`: a PEFT directory to a funclora adapter file.
    The metadata records the source and PEFT's base_model_name_or_path (when it names one)."""
    lora, cfg = from_peft(directory, model)
    base_name = _read_config(Path(directory)).get("base_model_name_or_path")
    meta = {"source": f"peft:{Path(directory).name}", **({"peft_base_model": base_name} if base_name else {})}
    save(out_path, lora, cfg, metadata={**meta, **(metadata or {})})
    return lora, cfg
