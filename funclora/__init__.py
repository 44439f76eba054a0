"""funclora: functional, JAX-style LoRA for PyTorch, built on torch.func.

    base = fl.freeze(model)                      # immutable pytree of the frozen model
    lora = fl.init_lora(model, cfg, seed=0)      # {"layer": {"A": ..., "B": ...}}: the trainable part
    f = fl.functional(model, cfg)                # pure: f(base, lora, x) -> output
    grads = torch.func.grad(loss)(lora, ...)     # gradients with respect to A and B only
"""
from .apply import STRATEGIES, functional, plan
from .cache import NoCacheWarning, split
from .config import ALL, LoraConfig, find_targets
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .head import headless, new_head, with_head
from .io import load, load_modules, read_metadata, save
from .keep import keep_term
from .lora import Lora, check_lora, delta_weight, init_lora, merge, unmerge
from .optim import Optimizer, adam, adamw, apply_updates, chain, clip_by_global_norm, sgd
from .params import FrozenParams, count, freeze, summary
from .peft import from_peft, to_peft
from .train import fit, fit_batches, make_loss, make_step

__all__ = [
    "ALL", "LoraConfig", "find_targets",
    "NoCacheWarning", "split",
    "STRATEGIES", "functional", "plan",
    "load", "load_modules", "read_metadata", "save",
    "latest_checkpoint", "load_checkpoint", "save_checkpoint",
    "headless", "new_head", "with_head",
    "Lora", "check_lora", "delta_weight", "init_lora", "merge", "unmerge",
    "Optimizer", "adam", "adamw", "sgd", "apply_updates", "chain", "clip_by_global_norm",
    "FrozenParams", "count", "freeze", "summary",
    "from_peft", "to_peft",
    "fit", "fit_batches", "make_loss", "make_step", "keep_term",
]
__version__ = "0.1.0"
