"""Benchmark one LoRA training step: funclora against PEFT, the frozen-backprop floor and friends.

Every (variant, config) runs in a subprocess of its own (so peak memory is its own, and no variant
warms the caches of the next), and the subprocesses run interleaved: round 1 runs every variant
once, round 2 again in a rotated order, and so on. Each run builds the model, takes `--warmup`
untimed steps and then `--steps` timed ones. The machine is shared and noisy, so the table reports
medians, and each ratio is the median over rounds of the ratio of two variants in the same round.

Variants (`--variants`, default: all but compile):
  forward            base forward, no grad
  floor              frozen base forward + backward to the input only (no weight gradient): the
                     least any LoRA step on all targets must cost
  funclora           one training step: f(base, lora, x), torch.func.grad over A and B, fl.adam
  peft               the same step with Hugging Face PEFT (same targets, rank, alpha, gaussian
                     init) and torch.optim.Adam over its LoRA parameters
  naive              funclora with strategy="weight" everywhere (W + B A inside functional_call)
  full               full fine-tuning step: every weight, torch.optim.Adam
  merged-inference   f(fl.merge(base, lora, cfg), None, x), the merge done once beforehand
  lora-inference     f(base, lora, x) without grad (adapters not merged)
  compile            the funclora step under torch.compile (compile time reported apart)

    python scripts/bench.py                                  # VGG19 224 px, batch 4, rank 8, all targets
    python scripts/bench.py --targets classifier
    python scripts/bench.py --backbone efficientnet_lite0
    python scripts/bench.py --sweep rank --plot docs/bench_rank.png
    python scripts/bench.py --sweep batch --plot docs/bench_batch.png
    python scripts/bench.py --backbone tiny --size 32 --rounds 1 --steps 1 --json out.json   # a smoke run
    python scripts/bench.py --many 1,2,4,8 --size 112 --rounds 2      # K adapters at once (scripts/bench_scale.py)
    python scripts/bench.py --processes 1,2 --size 112 --batch 8      # torchrun data-parallel
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

VARIANTS = ("forward", "floor", "funclora", "peft", "naive", "full", "merged-inference",
            "lora-inference", "compile")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "compile")
BACKBONES = ("vgg19", "efficientnet_lite0", "tiny")
SWEEP_DEFAULTS = {"rank": "1,4,16,64", "batch": "1,2,4,8"}
SWEEP_VARIANTS = ("floor", "funclora", "peft")


# --------------------------------------------------------------------------- worker (one subprocess)

def build_model(backbone: str, seed: int = 0):
    """The backbone in eval mode with random weights; vgg19 without vgg19()'s init-time copies."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if backbone == "vgg19":
        from torchvision.models import vgg19

        with torch.device("meta"):
            model = vgg19()
        model = model.to_empty(device="cpu")
        with torch.no_grad():  # torchvision's own init, in place (peak memory = the weights)
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)
        return model.eval(), ("classifier.*",)
    if backbone == "efficientnet_lite0":
        from funclora.vision.backbones import load_backbone

        b = load_backbone("efficientnet_lite0", weights=None)
        return b.model.eval(), b.targets
    # tiny: a VGG-like net for smoke runs
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(inplace=True), nn.Linear(32, 10))
    return model.eval(), ("7", "9")


def low_rank_flops(model, cfg, how: dict, x) -> dict:
    """Multiply-adds x 2 of the adapter's extra work in one training step, counted per layer from
    its shapes and strategy (the plan), next to the frozen convolutions' forward FLOPs."""
    import torch
    from torch import nn

    shapes, hooks = {}, []
    modules = dict(model.named_modules())

    def record(module, args, out, name):  # returns None: the output is left as it is
        shapes[name] = (tuple(args[0].shape), tuple(out.shape))

    for name, m in modules.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(partial(record, name=name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()

    def rows(name):  # output positions: N * Ho * Wo for a conv, every leading dim for a Linear
        out = shapes[name][1]
        return out[0] * out[2] * out[3] if isinstance(modules[name], nn.Conv2d) else int(torch.tensor(out[:-1]).prod())

    base = sum(2 * rows(n) * modules[n].weight.numel() for n in shapes)
    extra = 0
    first = next(iter(how), None)
    for name, strategy in how.items():
        m, r = modules[name], cfg.rank_for(name)
        conv = isinstance(m, nn.Conv2d)
        groups, cout = (m.groups if conv else 1), m.weight.shape[0]
        k = m.kernel_size[0] * m.kernel_size[1] if conv else 1
        cin = m.weight.shape[1] * groups
        n = rows(name)
        need_x = name != first  # the first adapted layer's input needs no gradient
        merge = 2 * r * m.weight.numel()  # B @ A, or A's and B's gradients from a full-size one
        a_conv, b_pass = 2 * n * r * cin * k, 2 * n * r * cout
        if strategy == "weight":  # merge, full weight gradient, grad A and grad B from it
            extra += 3 * merge + 2 * n * m.weight.numel()
        elif strategy == "fused":  # A(x) and A's weight gradient; B's two passes; merge in forward (+ backward)
            extra += 2 * a_conv + 2 * b_pass + merge * (2 if need_x else 1)
        else:  # activation: A, B forward; B's two passes, A's weight gradient (+ input gradient through A)
            extra += 2 * a_conv + 3 * b_pass + (a_conv if need_x else 0)
    return {"lowrank_flops": extra, "base_forward_flops": base}


def make_step(variant: str, model, targets, x, y, rank: int):
    """A closure that runs one unit of `variant` (a step, a forward...)."""
    import torch
    import torch.nn.functional as F

    import funclora as fl

    cfg = fl.LoraConfig(rank=rank, targets=targets, init="gaussian")
    info = {}
    if variant == "forward":
        def run():
            with torch.no_grad():
                model(x)
        return run, info
    if variant == "floor":
        def run():
            xx = x.detach().requires_grad_()
            torch.autograd.grad(F.cross_entropy(model(xx), y), xx)
        for p in model.parameters():
            p.requires_grad_(False)
        return run, info
    if variant == "full":
        params = [p.requires_grad_() for p in model.parameters()]
        opt = torch.optim.Adam(params, lr=1e-5)

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return run, info
    if variant == "peft":
        import peft

        names = fl.find_targets(model, cfg)
        pcfg = peft.LoraConfig(r=rank, lora_alpha=cfg.alpha, target_modules=names, lora_dropout=0.0,
                               init_lora_weights="gaussian")
        pmodel = peft.get_peft_model(model, pcfg).eval()
        params = [p for p in pmodel.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)
        info["trainable"] = sum(p.numel() for p in params)

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(pmodel(x), y).backward()
            opt.step()
        return run, info

    base, lora = fl.freeze(model), fl.init_lora(model, cfg, seed=0)
    strategy = "weight" if variant == "naive" else "auto"
    f = fl.functional(model, cfg, strategy=strategy)
    info["trainable"] = fl.count(lora)
    how = fl.plan(model, cfg, strategy)
    info["plan"] = {s: sum(v == s for v in how.values()) for s in sorted(set(how.values()))}
    info.update(low_rank_flops(model, cfg, how, x))
    if variant in ("merged-inference", "lora-inference"):
        # A trained-looking adapter (B != 0), merged once: inference then runs the base's own graph.
        lora = {n: {"A": ab["A"], "B": torch.randn_like(ab["B"]) * 1e-3} for n, ab in lora.items()}
        merged = fl.merge(base, lora, cfg)

        def run():
            with torch.no_grad():
                f(merged, None, x) if variant == "merged-inference" else f(base, lora, x)
        return run, info
    opt = fl.adam(1e-3)
    grad = torch.func.grad(lambda lora, x, y: F.cross_entropy(f(base, lora, x), y))
    if variant == "compile":
        grad = torch.compile(grad)
    state = {"lora": lora, "opt": opt.init(lora)}

    def run():
        grads = grad(state["lora"], x, y)
        updates, state["opt"] = opt.update(grads, state["opt"], state["lora"])
        state["lora"] = fl.apply_updates(state["lora"], updates)
    return run, info


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MB, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> bool:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    model, classifier = build_model(spec["backbone"])
    targets = ("*",) if spec["targets"] == "all" else classifier
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], generator=g)
    y = torch.randint(0, 10, (spec["batch"],), generator=g)
    if spec.get("channels_last"):
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    built_rss, _ = rss_mb()
    run, info = make_step(spec["variant"], model, targets, x, y, spec["rank"])
    start = time.perf_counter()
    run()  # the first call: allocations, and for compile the compilation
    first = time.perf_counter() - start
    for _ in range(spec["warmup"]):
        run()
    before, _ = rss_mb()
    peak_ok = reset_peak()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    after, step_peak = rss_mb()
    return {"times": times, "first": first, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_rss_mb": built_rss, "step_peak_mb": step_peak - before if peak_ok else None,
            "threads": torch.get_num_threads(), **info}


# --------------------------------------------------------------------------- parent

def run_worker(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    if spec["omp_wait"] != "default":
        env["OMP_WAIT_POLICY"] = spec["omp_wait"].upper()
    if spec["malloc"] == "keep":  # glibc keeps freed memory instead of returning it to the OS
        env.update(MALLOC_MMAP_THRESHOLD_=str(2**34), MALLOC_TRIM_THRESHOLD_=str(2**34))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def configs(args) -> list[dict]:
    """One dict per (config, variant) to run each round."""
    common = {"backbone": args.backbone, "size": args.size, "batch": args.batch, "rank": args.rank,
              "targets": args.targets, "threads": args.threads, "warmup": args.warmup, "steps": args.steps,
              "omp_wait": args.omp_wait, "malloc": args.malloc, "channels_last": args.channels_last}
    if not args.sweep:
        return [{**common, "variant": v} for v in args.variants]
    values = [int(v) for v in (args.values or SWEEP_DEFAULTS[args.sweep]).split(",")]
    variants = [v for v in args.variants if v in SWEEP_VARIANTS] if args.variants_given else list(SWEEP_VARIANTS)
    specs = []
    for value in values:
        for v in variants:
            if args.sweep == "rank" and v == "floor" and value != values[0]:
                continue  # the floor does not depend on the rank
            specs.append({**common, args.sweep: value, "variant": v})
    return specs


def key(spec: dict) -> tuple:
    return (spec["variant"], spec["rank"], spec["batch"])


def summarise(specs: list[dict], rounds: list[dict]) -> list[dict]:
    """Median time per spec, and per-round paired ratios against forward/floor/peft of the same config."""
    rows = []
    for spec in specs:
        results = [r[key(spec)] for r in rounds if "error" not in r.get(key(spec), {"error": 1})]
        errors = [r[key(spec)]["error"] for r in rounds if "error" in r.get(key(spec), {})]
        row = {**{k: spec[k] for k in ("variant", "backbone", "size", "batch", "rank", "targets", "threads")}}
        if not results:
            rows.append({**row, "error": errors[0] if errors else "not run"})
            continue
        times = [t for r in results for t in r["times"]]
        row.update(median_s=statistics.median(times), min_s=min(times), samples=len(times),
                   maxrss_mb=max(r["maxrss_mb"] for r in results),
                   step_peak_mb=max((r["step_peak_mb"] for r in results if r["step_peak_mb"] is not None),
                                    default=None),
                   first_s=statistics.median(r["first"] for r in results))
        for extra in ("trainable", "lowrank_flops", "base_forward_flops"):
            if extra in results[0]:
                row[extra] = results[0][extra]
        for ref in ("forward", "floor", "peft"):
            ratios = []
            for r in rounds:
                mine, other = r.get(key(spec)), r.get(key({**spec, "variant": ref}))
                if other is None and ref == "floor":  # rank sweep: one floor for all ranks
                    other = next((v for k, v in r.items() if k[0] == "floor" and k[2] == spec["batch"]), None)
                if mine and other and "error" not in mine and "error" not in other:
                    ratios.append(statistics.median(mine["times"]) / statistics.median(other["times"]))
            if ratios:
                row[f"x_{ref}"] = statistics.median(ratios)
        rows.append(row)
    return rows


def markdown(rows: list[dict], sweep: str | None) -> str:
    def fmt(v, spec):
        return "" if v is None else format(v, spec)
    head = ["variant"] + ([sweep] if sweep else []) + ["time/step (median)", "× forward", "× floor",
                                                       "× peft", "peak RSS MB", "step Δ MB"]
    if sweep:
        head.insert(2, "low-rank GFLOP")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | error: {row['error'][:120]} |")
            continue
        cells = [row["variant"]] + ([str(row[sweep])] if sweep else [])
        if sweep:
            cells.append(fmt(row.get("lowrank_flops", 0) / 1e9 if "lowrank_flops" in row else None, ".2f"))
        cells += [f"{row['median_s'] * 1000:.0f} ms", fmt(row.get("x_forward"), ".2f"), fmt(row.get("x_floor"), ".2f"),
                  fmt(row.get("x_peft"), ".2f"), f"{row['maxrss_mb']:.0f}", fmt(row.get("step_peak_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], sweep: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r["variant"] == "funclora" and "error" not in r]
    floors = {r["batch"]: r["median_s"] for r in rows if r["variant"] == "floor" and "error" not in r}
    peft = [r for r in rows if r["variant"] == "peft" and "error" not in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    gflop = [r["lowrank_flops"] / 1e9 for r in ours]
    over = [r["median_s"] - floors.get(r["batch"], 0.0) for r in ours]
    left.plot(gflop, over, "o-", label="funclora step − floor (measured)")
    for g_, o_, r in zip(gflop, over, ours):
        left.annotate(f"{sweep} {r[sweep]}", (g_, o_), textcoords="offset points", xytext=(4, -10), fontsize=8)
    if len(gflop) >= 2:  # the rate the first and last points imply, drawn through all of them
        rate = (over[-1] - over[0]) / max(gflop[-1] - gflop[0], 1e-12)
        xs = [min(gflop), max(gflop)]
        left.plot(xs, [over[0] + rate * (v - gflop[0]) for v in xs], "--", color="gray",
                  label=f"linear in counted FLOPs ({1 / max(rate, 1e-12):.0f} GFLOP/s)")
    left.set_xlabel("counted FLOPs of the low-rank path per step (GFLOP)")
    left.set_ylabel("seconds above the floor")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    values = [r[sweep] for r in ours]
    right.plot(values, [r["median_s"] for r in ours], "o-", label="funclora")
    if peft:
        right.plot([r[sweep] for r in peft], [r["median_s"] for r in peft], "s-", label="peft")
    fl_pts = sorted(floors.items())
    if sweep == "batch":
        right.plot([b for b, _ in fl_pts], [t for _, t in fl_pts], "k:", label="floor")
    elif fl_pts:
        right.axhline(fl_pts[0][1], color="k", linestyle=":", label="floor")
    right.set_xscale("log", base=2)
    right.set_xlabel(sweep)
    right.set_ylabel("seconds per step (median)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    r0 = ours[0] if ours else {}
    fig.suptitle(f"{r0.get('backbone', '')} {r0.get('size', '')} px, targets {r0.get('targets', '')}: "
                 f"{sweep} sweep ({r0.get('threads', '')} threads)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--backbone", choices=BACKBONES, default="vgg19")
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", choices=("all", "classifier"), default="all",
                   help="all: every Linear and Conv2d; classifier: the backbone's head")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all but compile)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (default 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads in every variant (default: all cores)")
    p.add_argument("--omp-wait", choices=("passive", "active", "default"), default="passive",
                   help="OMP_WAIT_POLICY of every variant (default passive: on a shared machine a spinning "
                        "thread waits for a descheduled one, which costs several ms per parallel region)")
    p.add_argument("--malloc", choices=("default", "keep"), default="default",
                   help="keep: glibc keeps freed memory (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so no "
                        "step pays page faults for memory the previous step gave back (default: glibc's default)")
    p.add_argument("--channels-last", action="store_true",
                   help="model and input in channels-last memory format, for every variant")
    p.add_argument("--sweep", choices=("rank", "batch"), default=None,
                   help="run floor, funclora and peft over --values of the rank or the batch size")
    p.add_argument("--values", default=None, help="sweep values (default rank 1,4,16,64; batch 1,2,4,8)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the sweep (default docs/bench_<sweep>.png)")
    p.add_argument("--json", type=Path, default=None, help="write every measurement and the summary here")
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess (default 900)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--many", default=None, metavar="K,K,...",
                   help="K adapters at once (fl.fit_many) against K in a row, e.g. 1,2,4,8, on Lite0's head "
                        "(cached features) and all layers: see scripts/bench_scale.py")
    p.add_argument("--many-vmap", action="store_true",
                   help="with --many: also time fit_many's vmap path on all layers (rows 'all (vmap)')")
    p.add_argument("--processes", default=None, metavar="N,N,...",
                   help="data-parallel under torchrun with N processes, e.g. 1,2: steps/s, bytes all-reduced")
    p.add_argument("--workloads", default="head,all", help="for --many/--processes: head, all (default both)")
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.variants_given = args.variants is not None
    args.variants = [v.strip() for v in (args.variants or ",".join(DEFAULT_VARIANTS)).split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    for name in ("size", "batch", "rank", "rounds", "steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.many or args.processes:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_scale

        return bench_scale.main(args)
    specs = configs(args)
    rounds = []
    started = time.perf_counter()
    for i in range(args.rounds):
        order = specs[i % len(specs):] + specs[:i % len(specs)]  # rotate: no variant always runs first
        results = {}
        for spec in order:
            results[key(spec)] = result = run_worker(spec, args.timeout)
            took = "error" if "error" in result else f"{statistics.median(result['times']) * 1000:.0f} ms"
            print(f"round {i + 1}/{args.rounds} {spec['variant']:>16} rank {spec['rank']:>3} batch "
                  f"{spec['batch']:>2}: {took}", file=sys.stderr, flush=True)
        rounds.append(results)
    rows = summarise(specs, rounds)
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    import torch

    title = (f"{args.backbone} {args.size} px, batch {args.batch}, rank {args.rank}, targets {args.targets}, "
             f"{'channels-last, ' if args.channels_last else ''}{args.threads} threads, OMP_WAIT_POLICY "
             f"{args.omp_wait}, malloc {args.malloc}, torch {torch.__version__}, {machine}; "
             f"{args.rounds} rounds × {args.steps} steps, medians")
    print(f"\n{title}\n")
    print(markdown(rows, args.sweep))
    compiled = [r for r in rows if r["variant"] == "compile" and "error" not in r]
    for r in compiled:
        print(f"\ncompile: first call (compilation) {r['first_s']:.1f} s, then {r['median_s'] * 1000:.0f} ms/step")
    if args.sweep:
        ours = [r for r in rows if r["variant"] == "funclora" and "error" not in r]
        floor = {r["batch"]: r["median_s"] for r in rows if r["variant"] == "floor" and "error" not in r}
        if len(ours) >= 2:
            a, b = ours[0], ours[-1]
            grow_t = (b["median_s"] - floor.get(b["batch"], 0)) - (a["median_s"] - floor.get(a["batch"], 0))
            grow_f = (b["lowrank_flops"] - a["lowrank_flops"]) / 1e9
            print(f"\n{args.sweep} {a[args.sweep]} -> {b[args.sweep]}: the low-rank path's counted FLOPs grow by "
                  f"{grow_f:.1f} GFLOP, the measured step above the floor by {grow_t * 1000:.0f} ms "
                  f"({grow_f / grow_t if grow_t > 0 else float('nan'):.1f} GFLOP/s)")
        path = args.plot or Path("docs") / f"bench_{args.sweep}.png"
        plot(rows, args.sweep, path)
        print(f"\nplot: {path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        raw = [{"round": i + 1, "variant": k[0], "rank": k[1], "batch": k[2], **v} for i, r in enumerate(rounds)
               for k, v in r.items()]
        args.json.write_text(json.dumps({"title": title, "args": {k: str(v) for k, v in vars(args).items()},
                                         "seconds": time.perf_counter() - started, "summary": rows, "runs": raw},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
