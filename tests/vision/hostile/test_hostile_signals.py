"""Hostile events from outside, on a real `funclora` process: Ctrl-C and SIGTERM while training,
SIGKILL, a reader that closes the pipe (`| head`), a FIFO as an image, two runs on one --out.
Each ends with one line (or none, for the pipe), the right exit status, no traceback, no hang,
and nothing half-written.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

import funclora as fl
from hostile import LITE, cli, one_line, snapshot, tiny_images, train_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WAIT = 180  # seconds: a shared, loaded machine may take long to import torch


def _start(*argv, **kw):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "funclora", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, env=env, **kw)


def _wait_for(proc, marker: bytes) -> bytes:
    """Read stderr until `marker` shows (training has started); fail rather than wait forever."""
    seen = b""
    deadline = time.monotonic() + WAIT
    os.set_blocking(proc.stderr.fileno(), False)
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} on stderr: {seen!r}"
        assert proc.poll() is None, f"exited {proc.returncode}: {seen!r}"
        chunk = proc.stderr.read()
        seen += chunk or b""
        time.sleep(0.05)
    os.set_blocking(proc.stderr.fileno(), True)
    return seen


def _finish(proc, seen=b""):
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out.decode(), (seen + err).decode()


def _long_train(images, out):
    return _start("train", images, *LITE, "--steps", 10**9, "--keep", "none", "--out", out)


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_training_stops_in_one_line_and_saves_nothing(sig, status, word, tmp_path):
    images = tiny_images(tmp_path / "images")
    before = snapshot(tmp_path)
    proc = _long_train(images, tmp_path / "a.safetensors")
    seen = _wait_for(proc, b"training")
    proc.send_signal(sig)
    code, out, err = _finish(proc, seen)
    assert code == status and "Traceback" not in err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last == f"funclora: {word} (no adapter saved)"
    assert snapshot(tmp_path) == before


def test_sigkill_while_training_leaves_nothing_and_the_next_run_works(tmp_path):
    images = tiny_images(tmp_path / "images")
    before = snapshot(tmp_path)
    proc = _long_train(images, tmp_path / "a.safetensors")
    _wait_for(proc, b"training")
    proc.kill()
    proc.communicate(timeout=WAIT)
    assert snapshot(tmp_path) == before
    assert cli(*train_args(images, tmp_path / "a.safetensors"))[0] == 0


def test_a_second_run_on_the_same_out_is_refused_while_the_first_trains(tmp_path):
    images = tiny_images(tmp_path / "images")
    first = _long_train(images, tmp_path / "a.safetensors")
    seen = _wait_for(first, b"training")
    try:
        code, out, err = cli(*train_args(images, tmp_path / "a.safetensors"))
        assert code == 1 and f"another funclora run (pid {first.pid})" in one_line(err, "--out")
    finally:
        first.send_signal(signal.SIGINT)
        _finish(first, seen)
    assert not (tmp_path / "a.safetensors").exists()


def test_ctrl_c_after_the_adapter_was_saved_says_it_was(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    images = tiny_images(tmp_path / "images")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("funclora.vision.report.write_report", interrupted)
    out = tmp_path / "a.safetensors"
    code, _, err = cli(*train_args(images, out, "--report", tmp_path / "report"))
    assert code == 130
    assert one_line(err) == f"funclora: interrupted (after the adapter was saved to {out})"
    assert fl.load(out)[1].targets == ("_fc",)


def test_piping_into_head_exits_quietly(tmp_path):
    images = tiny_images(tmp_path / "images", n=4)
    proc = _start("predict", images, *LITE, "--top", 1000)  # ~120 kB: more than a pipe holds
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does once it has its line
    err = proc.stderr.read().decode()
    proc.wait(timeout=WAIT)
    assert first.startswith(b"efficientnet_lite0")
    assert err == "" and proc.returncode in (0, 141)


def test_a_fifo_named_like_an_image_never_hangs_a_real_process(tmp_path):
    os.mkfifo(tmp_path / "x.png")
    proc = _start("predict", tmp_path / "x.png", *LITE)
    code, out, err = _finish(proc)
    assert code == 1 and "FIFO" in one_line(err, "x.png")
