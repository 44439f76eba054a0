"""Benchmark many adapters at once (fl.fit_many) and many processes (torchrun), for scripts/bench.py.

    python scripts/bench.py --many 1,2,4,8            # K adapters in one vmapped run vs K runs in a row
    python scripts/bench.py --processes 1,2           # data-parallel steps/s and bytes all-reduced per step

Workloads (EfficientNet-Lite0, random weights: timing only; `--size`, `--batch`, `--rank` apply):
  head   the goldfish setting: LoRA on the classifier, trained on cached features (fl.split) of
         the batch, with a keep term on 8 more images (as `funclora train` runs it)
  all    LoRA on every Conv2d and Linear of Lite0, on images

--many: every (workload, K, way) runs in a subprocess of its own (peak RSS is its own), rounds
interleaved; "sequential" is K `fl.fit` runs one after another in one process (the features are
cached once for all of them), "at once" is one `fl.fit_many` of K adapters (`--many-vmap`: also
"vmap", fit_many's vmap path on "all", the one it took before the stacked pass). Each run first takes
an untimed one-step fit, then times `--steps` steps (per workload: head x25).
--processes: `torchrun --nproc-per-node N` (threads: the cores shared out, so 1 x 2 threads vs
2 x 1 thread here) trains one adapter on the same global batch; rank 0 reports steps/s, the bytes
all-reduced per step (one bucket: gradients, loss and its terms) and the time of that all-reduce,
measured apart (after a barrier, median of 20).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ("head", "all")
HEAD_STEPS_FACTOR = 25  # the head's step is small: time more of them


def _setup(workload: str, size: int, batch: int, rank: int, seed: int = 0):
    """(f, base, model, cfg, x, y, extra) for a workload: what fit / fit_many train on."""
    import torch

    import funclora as fl
    from funclora.keep import keep_term
    from funclora.vision.backbones import load_backbone

    torch.manual_seed(seed)
    backbone = load_backbone("efficientnet_lite0", weights=None)
    model, base = backbone.model.eval(), fl.freeze(backbone.model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.full((batch,), 1)
    if workload == "all":
        cfg = fl.LoraConfig(rank=rank, targets=fl.ALL)
        return fl.functional(model, cfg), base, model, cfg, x, y, None
    cfg = fl.LoraConfig(rank=rank, targets=backbone.targets)
    prefix, suffix = fl.split(model, cfg)
    keep = prefix(base, torch.randn(8, 3, size, size, generator=g))
    return suffix, base, model, cfg, prefix(base, x), y, keep_term(suffix, base, keep, weight=10.0)


def many_worker(spec: dict) -> dict:
    import resource

    import torch

    import funclora as fl

    torch.set_num_threads(spec["threads"])
    f, base, model, cfg, x, y, extra = _setup(spec["workload"], spec["size"], spec["batch"], spec["rank"])
    k, steps = spec["k"], spec["steps"]
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(k)]
    opt = fl.adam(1e-3)
    common = dict(opt=opt, extra=extra, progress=False)
    if spec["way"] == "sequential":
        fl.fit(f, base, loras[0], x, y, steps=1, **common)  # warm-up
        start = time.perf_counter()
        for lora in loras:
            fl.fit(f, base, lora, x, y, steps=steps, **common)
    else:
        if spec["way"] == "vmap":  # f without its stacked form: fit_many's vmap path (all it had before)
            plain, f = f, (lambda *args, **kw: plain(*args, **kw))
            f.vmappable = getattr(plain, "vmappable", lambda: plain)
        fl.fit_many(f, base, loras, x, y, steps=1, **common)
        start = time.perf_counter()
        fl.fit_many(f, base, loras, x, y, steps=steps, **common)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "trainable_per_adapter": fl.count(loras[0]) if hasattr(fl, "count") else None}


def _run(args: list[str], env: dict, timeout: float) -> dict:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {' | '.join(proc.stderr.strip().splitlines()[-3:])}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _side_by_side(workload: str, k: int, steps: int, pairs: list[tuple[dict, dict]]) -> dict:
    """One table row from (sequential, at once) runs of the same rounds: medians of time and ratio, max RSS."""
    return {"workload": workload, "k": k, "steps": steps,
            "sequential_s": statistics.median(s["seconds"] for s, _ in pairs),
            "at_once_s": statistics.median(m["seconds"] for _, m in pairs),
            "ratio": statistics.median(m["seconds"] / s["seconds"] for s, m in pairs),
            "sequential_mb": max(s["maxrss_mb"] for s, _ in pairs),
            "at_once_mb": max(m["maxrss_mb"] for _, m in pairs)}


def run_many(ks: list[int], opts) -> dict:
    specs = [{"workload": w, "k": k, "way": way, "size": opts.size, "batch": opts.batch, "rank": opts.rank,
              "threads": opts.threads, "steps": opts.steps * (HEAD_STEPS_FACTOR if w == "head" else 1)}
             for w in opts.workloads for k in ks
             for way in ("sequential", "at once", *(["vmap"] if opts.many_vmap and w == "all" else []))]
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads), OMP_WAIT_POLICY="PASSIVE")
    rounds = []
    for i in range(opts.rounds):
        order = specs[i % len(specs):] + specs[:i % len(specs)]
        results = {}
        for spec in order:
            r = _run([sys.executable, __file__, "--many-worker", json.dumps(spec)], env, opts.timeout)
            results[(spec["workload"], spec["k"], spec["way"])] = r
            took = r.get("error") or f"{r['seconds']:.2f} s, {r['maxrss_mb']:.0f} MB"
            print(f"round {i + 1}/{opts.rounds} {spec['workload']} K={spec['k']} {spec['way']}: {took}",
                  file=sys.stderr, flush=True)
        rounds.append(results)
    rows = []
    for w in opts.workloads:
        for k in ks:
            seq = [r[(w, k, "sequential")] for r in rounds]
            many = [r[(w, k, "at once")] for r in rounds]
            ok = [(s, m) for s, m in zip(seq, many) if "error" not in s and "error" not in m]
            if not ok:
                rows.append({"workload": w, "k": k, "error": (seq + many)[0].get("error", "?")})
                continue
            vm = [r.get((w, k, "vmap")) for r in rounds]
            vm_ok = [(s, v) for s, v in zip(seq, vm) if v is not None and "error" not in s and "error" not in v]
            steps = opts.steps * (HEAD_STEPS_FACTOR if w == "head" else 1)
            if vm_ok:
                rows.append(_side_by_side(f"{w} (vmap)", k, steps, vm_ok))
            rows.append(_side_by_side(w, k, steps, ok))
    lines = ["| workload | K | K in a row | K at once | at once / in a row | peak RSS in a row | peak RSS at once |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['k']} | error: {r['error'][:80]} | | | | |")
            continue
        lines.append(f"| {r['workload']} | {r['k']} | {r['sequential_s']:.2f} s | {r['at_once_s']:.2f} s | "
                     f"{r['ratio']:.2f}× | {r['sequential_mb']:.0f} MB | {r['at_once_mb']:.0f} MB |")
    return {"rows": rows, "rounds": [{" ".join(map(str, k)): v for k, v in r.items()} for r in rounds],
            "table": "\n".join(lines)}


def dist_worker(spec: dict) -> None:
    """One torchrun rank: fld.fit on the global batch; rank 0 prints the measurements as JSON."""
    import torch
    import torch.distributed as dist

    import funclora as fl
    import funclora.distributed as fld

    world = fld.init()
    torch.set_num_threads(spec["threads"])
    f, base, model, cfg, x, y, extra = _setup(spec["workload"], spec["size"], spec["batch"], spec["rank"])
    lora = fld.broadcast(fl.init_lora(model, cfg), world)
    opt, steps = fl.adam(1e-3), spec["steps"]
    fld.fit(f, base, lora, x, y, opt=opt, steps=1, world=world, extra=extra, progress=False)  # warm-up
    start = time.perf_counter()
    fld.fit(f, base, lora, x, y, opt=opt, steps=steps, world=world, extra=extra, progress=False)
    seconds = time.perf_counter() - start
    payload = (lora, torch.zeros(()), {"train": torch.zeros(()), "extra": torch.zeros(())})  # what a step sends
    nbytes, reduce_s = fld.bucket_bytes(payload), None
    if world.size > 1:
        times = []
        for _ in range(20):
            dist.barrier()
            t = time.perf_counter()
            fld.all_reduce(payload, world)
            times.append(time.perf_counter() - t)
        reduce_s = statistics.median(times)
    if world.rank == 0:
        print(json.dumps({"processes": world.size, "threads": torch.get_num_threads(),
                          "steps_per_s": steps / seconds, "bytes_per_step": nbytes if world.size > 1 else 0,
                          "numbers_per_step": nbytes // 4, "allreduce_s": reduce_s}), flush=True)
    fld.shutdown(world)


def run_processes(ns: list[int], opts) -> dict:
    cores = opts.threads
    rows, runs = [], []
    for i in range(opts.rounds):
        for w in opts.workloads:
            for n in (ns[i % len(ns):] + ns[:i % len(ns)]):
                spec = {"workload": w, "size": opts.size, "batch": opts.batch, "rank": opts.rank,
                        "threads": max(1, cores // n),
                        "steps": opts.steps * (HEAD_STEPS_FACTOR if w == "head" else 1)}
                env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), OMP_WAIT_POLICY="PASSIVE")
                r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                          __file__, "--dist-worker", json.dumps(spec)], env, opts.timeout)
                runs.append({"round": i + 1, "workload": w, **r, "processes": n})
                took = r.get("error") or f"{r['steps_per_s']:.2f} steps/s"
                print(f"round {i + 1}/{opts.rounds} {w} {n} process(es): {took}", file=sys.stderr, flush=True)
    for w in opts.workloads:
        for n in ns:
            ok = [r for r in runs if r["workload"] == w and r["processes"] == n and "error" not in r]
            if not ok:
                rows.append({"workload": w, "processes": n, "error": "all runs failed"})
                continue
            times = [r["allreduce_s"] for r in ok if r["allreduce_s"] is not None]
            rows.append({"workload": w, "processes": n, "threads": ok[0]["threads"],
                         "steps_per_s": statistics.median(r["steps_per_s"] for r in ok),
                         "bytes_per_step": ok[0]["bytes_per_step"],
                         "allreduce_ms": statistics.median(times) * 1000 if times else None})
    lines = ["| workload | processes × threads | steps/s | bytes all-reduced per step | all-reduce time |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['processes']} | error | | |")
            continue
        comm = f"{r['allreduce_ms']:.2f} ms" if r["allreduce_ms"] is not None else "—"
        lines.append(f"| {r['workload']} | {r['processes']} × {r['threads']} | {r['steps_per_s']:.2f} | "
                     f"{r['bytes_per_step']:,} | {comm} |")
    return {"rows": rows, "runs": runs, "table": "\n".join(lines)}


def main(opts) -> int:
    """Run `--many` and/or `--processes` as scripts/bench.py parsed them; print the tables."""
    import platform

    import torch

    started, out = time.perf_counter(), {}
    title = (f"efficientnet_lite0 {opts.size} px, batch {opts.batch}, rank {opts.rank}, {opts.threads} threads "
             f"in all, torch {torch.__version__}, {platform.machine()} {os.cpu_count()} cores; "
             f"{opts.rounds} rounds, medians")
    if opts.many:
        out["many"] = run_many([int(k) for k in opts.many.split(",")], opts)
        print(f"\nfit_many: {title}; {opts.steps} steps (head: {opts.steps * HEAD_STEPS_FACTOR})\n")
        print(out["many"]["table"])
    if opts.processes:
        out["processes"] = run_processes([int(n) for n in opts.processes.split(",")], opts)
        print(f"\ntorchrun: {title}; global batch {opts.batch}\n")
        print(out["processes"]["table"])
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps({"title": title, "seconds": time.perf_counter() - started, **out},
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if sys.argv[1] == "--many-worker":
        print(json.dumps(many_worker(json.loads(sys.argv[2]))))
    elif sys.argv[1] == "--dist-worker":
        dist_worker(json.loads(sys.argv[2]))
