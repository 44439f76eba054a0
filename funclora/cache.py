"""Run the frozen part of a model once: split f(base, lora, x) into prefix(base, x) and suffix(base, lora, feats).

Everything that depends only on the input and the frozen base, not on any adapter, is the same
for an image at every training step. `split` finds that part from the model itself: a torch.fx
trace of the adapted model, in which every value that reaches an adapted layer (or the output)
without passing through one is a feature of the input. `prefix` computes those features (once,
without grad); `suffix` runs the rest, so suffix(base, lora, prefix(base, x)) == f(base, lora, x).
A model that torch.fx cannot trace (data-dependent control flow...), or a split for train mode
(dropout and batch statistics vary per step), is not split: prefix returns (x,), suffix is f
itself, and a `NoCacheWarning` says why, in one line.

>>> import torch, funclora as fl
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
...                             torch.nn.Linear(8 * 9, 2)).eval()
>>> cfg = fl.LoraConfig(rank=2, targets=("3",))                # the head only
>>> base, lora = fl.freeze(model), fl.init_lora(model, cfg)
>>> prefix, suffix = fl.split(model, cfg)
>>> x = torch.randn(4, 3, 5, 5)
>>> feats = prefix(base, x)                      # conv, relu, flatten and the head's W x + b: once
>>> [tuple(t.shape) for t in feats]
[(4, 72), (4, 2)]
>>> torch.allclose(suffix(base, lora, feats), fl.functional(model, cfg)(base, lora, x))
True
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import fx, nn
from torch.func import functional_call

from .config import LoraConfig, find_targets
from .apply import AUTO, adapted_shell, functional, plan
from .lora import Lora

__all__ = ["split", "NoCacheWarning", "Features"]

Features = tuple
"""What prefix returns: the values (tensors, or the odd shape number) the suffix reads."""


class NoCacheWarning(UserWarning):
    """`split` could not separate a frozen prefix; it returned an identity prefix and the whole f."""


def split(model: nn.Module, cfg: LoraConfig, *, strategy: str | Mapping[str, str] = AUTO,
          train: bool = False) -> tuple[Callable[[Mapping[str, torch.Tensor], torch.Tensor], Features],
                     Callable[[Mapping[str, torch.Tensor], "Lora | None", Features], torch.Tensor]]:
    """(prefix, suffix) with suffix(base, lora, prefix(base, x)) == functional(model, cfg)(base, lora, x).

    prefix(base, x) -> a tuple of features, computed under no_grad: cache it per input and base.
    suffix(base, lora, feats) is pure in the same way as f (lora=None works too, and base is
    checked as f checks it), for features computed from the same base: a merged base has features
    of its own (prefix(merged, x)). Both run in eval mode, as f(base, lora, x) does (the model's
    own .training is not read).
    The prefix holds every layer no adapter reaches, including side branches that rejoin later
    (a residual's skip), and the frozen part W x + b of each first adapted layer: the suffix adds
    only its low-rank path scale * B(A(x)) there (computed as the "activation" strategy does).
    With train=True nothing is cached (dropout and batch statistics vary per step): suffix is
    f in train mode, suffix(base, lora, feats, seed=None, mutable=False) as in `functional`.
    """
    targets = set(find_targets(model, cfg))
    how = plan(model, cfg, strategy)
    shell, tensors = adapted_shell(model, cfg, strategy)
    reason = "train mode (dropout and batch statistics vary per step)" if train else None
    if reason is None:
        try:  # the eval-mode shell: code that reads self.training is traced as f runs it
            graph = _Tracer(targets).trace(shell)
        except Exception as error:  # torch.fx raises many kinds (TraceError, TypeError, ...)
            reason = f"torch.fx cannot trace {type(model).__name__} ({_one_line(error)})"
    if reason is not None:
        warnings.warn(f"funclora.split: {reason}; caching nothing (prefix returns (x,))", NoCacheWarning,
                      stacklevel=2)
        return _identity_split(tensors, functional(model, cfg, strategy=strategy), train)
    prefix_graph, suffix_graph, entries = _cut(graph, targets, shell)
    shell, tensors = adapted_shell(model, cfg, {**how, **{layer: "activation" for layer in entries.values()}})
    prefix_module = _module(shell, prefix_graph)
    layers = dict(shell.named_modules())
    suffix_module = _module(shell, suffix_graph, {w: _LowRankDelta(layers[n]) for w, n in entries.items()})
    for name in entries.values():  # so that functional_call fills their lora_A and lora_B
        suffix_module.add_submodule(name, layers[name])
    prefix_keys, suffix_keys = _paths(prefix_module), _paths(suffix_module)

    def prefix(base: Mapping[str, torch.Tensor], x: torch.Tensor) -> Features:
        with torch.no_grad():
            return tuple(functional_call(prefix_module, _only(tensors(base, None), prefix_keys), (x,)))

    def suffix(base: Mapping[str, torch.Tensor], lora: Lora | None, feats: Features) -> torch.Tensor:
        return functional_call(suffix_module, _only(tensors(base, lora), suffix_keys), tuple(feats))

    return prefix, suffix


class _Tracer(fx.Tracer):
    """torch.fx's tracer with every adapted layer kept whole (one call_module node each)."""

    def __init__(self, targets: set[str]):
        super().__init__()
        self.targets = targets

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.targets or super().is_leaf_module(m, qualname)


class _LowRankDelta(nn.Module):
    """(frozen output W x + b, x) -> the adapted output: the layer's LoRA hook alone, on the cached output."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = [layer]  # not a child: functional_call fills its tensors at the layer's own path

    def forward(self, frozen: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layer, out = self.layer[0], frozen
        for hook in layer._forward_hooks.values():  # the "activation" hook of funclora.apply
            out = hook(layer, (x,), out)
        # Without an adapter the hook hands back the cached tensor: copy it, so that an in-place
        # op downstream (ReLU(inplace=True)) cannot change the cache.
        return out.clone() if out is frozen else out


def _cut(graph: fx.Graph, targets: set[str], root: nn.Module) -> tuple[fx.Graph, fx.Graph, dict[str, str]]:
    """The prefix graph (x -> features), the suffix graph (features -> output) of `graph`, and
    {name in the suffix: layer} for the first adapted layers, whose frozen output is a feature.

    In-place ops are followed on the value they write into (not on views of it): a frozen value
    that an adapted op writes into is adapted for its later readers, and a feature that a frozen
    op writes into later is copied as it is made."""
    nodes = list(graph.nodes)
    adapted, from_input, rewritten = set(), set(), set()  # downstream of an adapter / of the input
    entries = []  # first adapted layers: one frozen, input-dependent argument
    for node in nodes:
        inputs = node.all_input_nodes
        if node.op == "placeholder" or any(i in from_input for i in inputs):
            from_input.add(node)
        target = node.op == "call_module" and node.target in targets
        if target or any(i in adapted or i in rewritten for i in inputs):
            adapted.add(node)
            if _in_place(node, root) and node.args[0] not in adapted:
                rewritten.add(node.args[0])  # its readers from here on see what the adapter wrote
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if (target and not node.kwargs and len(node.args) == 1 and first in from_input
                and first not in adapted and first not in rewritten):
            entries.append(node)
    # Features: input-dependent values no adapter reaches, read by an adapted node or the output.
    # (Values that depend on neither, e.g. a get_attr of a weight, are recomputed in the suffix.)
    output = next(n for n in nodes if n.op == "output")
    feats = [n for n in nodes if n in from_input and n not in adapted and n.op != "output"
             and any(u in adapted or u is output for u in n.users)]
    overwritten = {n.args[0] for n in nodes if n not in adapted and _in_place(n, root)}
    prefix = fx.Graph()
    copied: dict[fx.Node, fx.Node] = {}
    kept: dict[fx.Node, fx.Node] = {}  # feature -> the prefix value to return
    for node in nodes:
        if node.op != "output" and (node not in adapted or node in entries):
            copied[node] = kept[node] = prefix.node_copy(node, lambda n: copied[n])
            if node in overwritten and node in feats:
                kept[node] = prefix.call_method("clone", (copied[node],))
    prefix.output(tuple(kept[n] for n in [*feats, *entries]))

    suffix = fx.Graph()
    env = {n: suffix.placeholder(f"feat_{i}") for i, n in enumerate(feats)}
    frozen = {n: suffix.placeholder(f"frozen_{i}") for i, n in enumerate(entries)}
    names = {}
    for node in nodes:
        if node in env or node.op == "placeholder":
            continue
        if node in frozen:
            names[f"_low_rank_{len(names)}"] = node.target
            env[node] = suffix.call_module(f"_low_rank_{len(names) - 1}", (frozen[node], env[node.args[0]]))
        elif node.op == "output" or node in adapted or node not in from_input:
            writes = _in_place(node, root)
            first = node.args[0] if writes else None
            if writes and env[first].op == "placeholder":  # never write into the cache: into a copy
                env[first] = suffix.call_method("clone", (env[first],))
            env[node] = suffix.node_copy(node, lambda n: env[n])
            if writes:
                env[first] = env[node]  # later readers of the value see the write
    return prefix, suffix, names


def _in_place(node: fx.Node, root: nn.Module) -> bool:
    """Whether `node` may write into its first argument (ReLU(inplace=True), x.add_(...), x += y...)."""
    if not (node.args and isinstance(node.args[0], fx.Node)):
        return False
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(node.target), "inplace", False))
    name = getattr(node.target, "__name__", str(node.target))
    return (bool(node.kwargs.get("inplace")) or (name.endswith("_") and not name.startswith("_"))
            or name == "setitem" or (name.startswith("i") and name[1:] in _OPERATORS))


_OPERATORS = {"add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
              "lshift", "rshift"}  # operator.iadd & co.


def _identity_split(tensors, f, train: bool):
    def prefix(base: Mapping[str, torch.Tensor], x: torch.Tensor) -> Features:
        tensors(base, None)  # the same check as the suffix's, at the same place as a real prefix's
        return (x,)

    def suffix(base: Mapping[str, torch.Tensor], lora: Lora | None, feats: Features, **mode) -> torch.Tensor:
        (x,) = feats
        return f(base, lora, x, train=train, **mode)

    return prefix, suffix


def _module(root: nn.Module, graph: fx.Graph, extra: Mapping[str, nn.Module] | None = None) -> fx.GraphModule:
    """A GraphModule of `graph` over `root`'s own submodules and tensors (shared, not copied) and
    `extra` modules, with unused code dropped."""
    extra = extra or {}
    owned = {node.target: extra[node.target] if node.target in extra else _attr(root, node.target)
             for node in graph.nodes if node.op in ("call_module", "get_attr")}
    module = fx.GraphModule(owned, graph)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def _attr(root: nn.Module, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _paths(module: nn.Module) -> set[str]:
    return {name for name, _ in module.named_modules()}


def _only(tensors: Mapping[str, torch.Tensor], paths: set[str]) -> dict:
    """The entries of `tensors` that belong to a module of the split graph (functional_call refuses others)."""
    return {k: v for k, v in tensors.items() if k.rpartition(".")[0] in paths}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
