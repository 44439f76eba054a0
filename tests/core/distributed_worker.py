"""One process of a data-parallel run, for test_distributed.py (run under torchrun, or with its env set).

    python -m torch.distributed.run --nproc-per-node 2 distributed_worker.py OUT_DIR [MODE]

MODE "train" (default): data-parallel `fld.fit` and `fl.fit_many` on `problem()`'s global batch;
rank 0 alone writes OUT_DIR/fit.safetensors, many_<k>.safetensors and histories.json.
MODE "raise" / "kill": rank 1 fails at step 3 (an error, or SIGKILL). MODE "hang": rank 1 stops
answering as soon as it has joined the group (before any collective, so that rank 0 can have waited
on nothing else when its timeout ends: a loaded machine delays a step by seconds, which is no hang).
Every rank that fails prints one line (fld.explain) and exits 1.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

import funclora as fl
import funclora.distributed as fld
from funclora.keep import keep_term

STEPS = 4


def problem():
    """(model, cfg, global x (7 examples: shards of 4 and 3), y, keep images, per-adapter data)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, 6, 6, generator=g), torch.randint(0, 4, (7,), generator=g)
    keep = torch.randn(3, 3, 6, 6, generator=g)
    xs = [x, torch.randn(7, 3, 6, 6, generator=g)]
    return model, cfg, x, y, keep, xs


def opts():
    return fl.adam(3e-2), [fl.adam(3e-2), fl.sgd(0.1, momentum=0.9)]


def main(out: Path, mode: str) -> int:
    world = fld.init()
    if mode == "hang" and world.rank == 1:
        time.sleep(3600)
    try:
        model, cfg, x, y, keep, xs = problem()
        base, f = fl.freeze(model), fl.functional(model, cfg)
        # Each rank draws another adapter: the broadcast must make them rank 0's.
        lora = fld.broadcast(fl.init_lora(model, cfg, seed=world.rank), world)

        def batch(i):
            if i == 2 and world.rank == 1 and mode == "raise":
                raise ValueError("cannot read image bad.png (truncated file)")
            if i == 2 and world.rank == 1 and mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            return x

        opt, many_opts = opts()
        lora, history = fld.fit(f, base, lora, batch, y, opt=opt, steps=STEPS, world=world, progress=False,
                                extra=keep_term(f, base, keep, weight=0.5), terms=True)
        many, many_histories = fl.fit_many(f, base, [fl.init_lora(model, cfg, seed=s) for s in (0, 1)], xs, y,
                                           opt=many_opts, steps=STEPS, progress=False, world=world)
        if world.rank == 0:
            fl.save(out / "fit.safetensors", lora, cfg)
            for k, adapter in enumerate(many):
                fl.save(out / f"many_{k}.safetensors", adapter, cfg)
            (out / "histories.json").write_text(json.dumps({"fit": history, "many": many_histories}))
        return 0
    except Exception as error:  # noqa: BLE001 - every failure becomes one line
        print(f"worker: {fld.explain(error, world)}", file=sys.stderr, flush=True)
        return 1
    finally:
        fld.shutdown(world)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "train"))
