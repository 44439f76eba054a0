"""Specification of funclora.distributed: data-parallel training is one all-reduce of the gradient pytree.

  (a) shards of a global batch cover it exactly, and the shard-weighted losses of all ranks sum to
      the global batch's loss and gradient (checked in one process, rank by rank);
  (b) in a world of one process everything is the identity: fld.fit is fl.fit, bitwise;
  (c) torchrun with 2 processes (gloo, localhost) ends equal to 1 process on the same global batch,
      to 1e-5 relative, for fld.fit (with a keep term) and fl.fit_many;
  (d) a rank that fails (an error, SIGKILL, or silence) stops every rank within a timeout, each
      with one line, and never hangs.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import grad_and_value
from torch.utils._pytree import tree_leaves, tree_map

import funclora as fl
import funclora.distributed as fld
from distributed_worker import STEPS, opts, problem
from helpers import free_ports
from funclora.keep import keep_term

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", **extra}
    return {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} | extra


@given(st.integers(1, 20), st.integers(1, 5))
def test_shards_cover_the_global_batch_and_their_shares_sum_to_one(n, size):
    batch = (torch.arange(n), torch.arange(n) * 10, 7)  # cached features: tensors and a shape number
    if n < size:
        with pytest.raises(ValueError, match=f"cannot feed {size} processes"):
            fld.shard(batch, fld.World(0, size, CPU))
        return
    parts = [fld.shard(batch, fld.World(r, size, CPU)) for r in range(size)]
    assert torch.equal(torch.cat([p[0] for p, _ in parts]), batch[0])
    assert torch.equal(torch.cat([p[1] for p, _ in parts]), batch[1]) and all(p[2] == 7 for p, _ in parts)
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    assert max(len(p[0]) for p, _ in parts) - min(len(p[0]) for p, _ in parts) <= 1
    names = [f"img{i}.png" for i in range(n)]  # a rank loads only its own files
    assert sum((fld.shard(names, fld.World(r, size, CPU))[0] for r in range(size)), []) == names


def test_the_shard_weighted_losses_of_all_ranks_sum_to_the_global_gradient():
    model, cfg, x, y, keep, _ = problem()
    base, f = fl.freeze(model), fl.functional(model, cfg)
    lora = fl.init_lora(model, cfg, seed=3)
    lora = {n: {**ab, "B": ab["B"] + 0.1} for n, ab in lora.items()}
    extra = keep_term(f, base, keep, weight=0.5)
    size = 3
    summed = None
    for rank in range(size):  # what all_reduce adds up, one rank at a time
        world = fld.World(rank, size, CPU)
        (xr, share), (yr, _) = fld.shard(x, world), fld.shard(y, world)
        grads, (total, _) = grad_and_value(fld.weighted_loss(f, extra=extra, size=size), has_aux=True)(
            lora, base, xr, yr, share)
        summed = (grads, total) if summed is None else tree_map(torch.add, summed, (grads, total))
    grads, total = grad_and_value(fl.make_loss(f, extra=extra))(lora, base, x, y)
    torch.testing.assert_close(summed, (grads, total), rtol=1e-5, atol=1e-7)


def test_a_world_of_one_is_plain_fit_bitwise():
    model, cfg, x, y, keep, _ = problem()
    base, f = fl.freeze(model), fl.functional(model, cfg)
    world = fld.init()  # no torchrun here
    assert world == fld.World(0, 1, world.device)
    lora = fl.init_lora(model, cfg)
    assert fld.broadcast(lora, world) is lora and fld.all_reduce(lora, world) is lora
    extra = keep_term(f, base, keep, weight=0.5)
    ours = fld.fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=3, world=world, extra=extra, progress=False)
    theirs = fl.fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=3, extra=extra, progress=False)
    assert ours[1] == theirs[1]
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(ours[0]), tree_leaves(theirs[0])))


def test_the_bucket_is_every_number_once():
    model, cfg, *_ = problem()
    lora = fl.init_lora(model, cfg)
    assert fld.bucket_bytes(lora) == 4 * sum(t.numel() for t in tree_leaves(lora))


def _reference():
    """What one process computes on the whole global batch."""
    model, cfg, x, y, keep, xs = problem()
    base, f = fl.freeze(model), fl.functional(model, cfg)
    opt, many_opts = opts()
    lora, history = fl.fit(f, base, fl.init_lora(model, cfg, seed=0), x, y, opt=opt, steps=STEPS, progress=False,
                           extra=keep_term(f, base, keep, weight=0.5), terms=True)
    many, many_histories = fl.fit_many(f, base, [fl.init_lora(model, cfg, seed=s) for s in (0, 1)], xs, y,
                                       opt=many_opts, steps=STEPS, progress=False)
    return lora, history, many, many_histories


def test_two_processes_on_torchrun_end_equal_to_one(tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          str(WORKER), str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lora, history, many, many_histories = _reference()
    got = json.loads((tmp_path / "histories.json").read_text())
    tol = dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fl.load(tmp_path / "fit.safetensors")[0], lora, **tol)
    torch.testing.assert_close(got["fit"], history, **tol)
    for k in range(2):
        torch.testing.assert_close(fl.load(tmp_path / f"many_{k}.safetensors")[0], many[k], **tol)
    torch.testing.assert_close(got["many"], many_histories, **tol)
    assert history["extra"][-1] > 0  # the keep term did take part


def test_a_failing_rank_stops_every_rank_with_one_line(tmp_path):
    # Three runs at once, ranks started directly (torchrun's agent would also stop them: the
    # guarantee is ours): rank 1 raises or is killed at its third step, or stops answering once
    # it has joined. Only the silent rank needs a timeout (5 s here, for a short test); a rank that
    # raises or dies is noticed at once, so those runs keep the default (with 5 s, a step delayed
    # 5 s by a loaded machine stopped them: the cause of this test's rare failures). Rank 1 of the
    # silent run joins later than its timeout: joining waits longer, being no hang.
    timeouts = {"raise": fld.TIMEOUT_S, "kill": fld.TIMEOUT_S, "hang": 5}
    modes = tuple(timeouts)
    ports = dict(zip(modes, free_ports(len(modes))))  # distinct: three runs at once

    def start(mode, rank):
        return subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / mode), mode], stderr=subprocess.PIPE,
                                text=True, env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[mode]),
                                                    FUNCLORA_DIST_TIMEOUT=str(timeouts[mode])))

    for mode in modes:
        (tmp_path / mode).mkdir()
    runs = {mode: [start(mode, 0)] + ([] if mode == "hang" else [start(mode, 1)]) for mode in modes}
    _listening(ports["hang"])  # rank 0 waits in init for rank 1...
    time.sleep(timeouts["hang"] + 1)  # ...longer than the timeout
    runs["hang"].append(start("hang", 1))
    stderr = {}  # whole, so that a failure shows what each rank printed
    try:
        for mode in modes:
            rank0, rank1 = runs[mode]
            stderr[mode, 0] = rank0.communicate(timeout=240)[1]  # rank 0 ends by itself...
            if mode == "hang":  # ...while the silent rank 1 is still alive (torchrun would end it)
                assert rank1.poll() is None, rank1.communicate()[1][-2000:]
                rank1.kill()
            stderr[mode, 1] = rank1.communicate(timeout=60)[1]
    finally:
        for procs in runs.values():
            for p in procs:
                p.kill()
    lines = {key: _lines(text) for key, text in stderr.items()}
    for mode in modes:
        rank0, rank1 = runs[mode]
        assert rank0.returncode == 1 and len(lines[mode, 0]) == 1, (mode, rank0.returncode, stderr[mode, 0][-3000:])
        assert lines[mode, 0][0].startswith(f"worker: rank 0 of 2: stopped: another rank failed or gave no answer "
                                             f"within {timeouts[mode]:g} s (its own"), lines[mode, 0]
        assert not list((tmp_path / mode).iterdir())  # a failed run writes nothing
    assert runs["raise"][1].returncode == 1
    assert lines["raise", 1] == ["worker: rank 1 of 2: cannot read image bad.png (truncated file)"]
    assert runs["kill"][1].returncode == -signal.SIGKILL and lines["kill", 1] == []


def _listening(port: int, within_s: float = 120) -> None:
    """Wait until a rank 0 listens on `port` (its store: it has entered the process group's init)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no rank 0 listening on port {port} after {within_s} s")


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("worker:")]
