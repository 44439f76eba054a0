"""Hostile adapter files and hostile disks, at the API: fl.save and fl.load refuse what is not a
finite float adapter with a complete, well-typed config, naming the file; writes are atomic,
byte-for-byte repeatable, follow the umask, and never lose a trained adapter to a failed write.
"""
import errno
import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

import funclora as fl
from funclora import io as fio
from hostile import snapshot

MODEL = torch.nn.Sequential(torch.nn.Linear(4, 3))
CFG = fl.LoraConfig(rank=2)


def _lora(**parts):
    lora = fl.init_lora(MODEL, CFG)
    lora["0"].update(parts)
    return lora


def _good(path):
    fl.save(path, _lora(B=torch.ones(3, 2)), CFG, metadata={"note": "x"})
    return path


BAD_TENSORS = {
    "nan-A": {"A": torch.full((2, 4), float("nan"))},
    "inf-B": {"B": torch.full((3, 2), float("inf"))},
    "minus-inf-B": {"B": torch.tensor([[0.0, -float("inf")]] * 3)},
    "one-nan": {"A": torch.tensor([[0.0, 1.0, float("nan"), 2.0]] * 2)},
    "int64-A": {"A": torch.ones(2, 4, dtype=torch.int64)},
    "bool-B": {"B": torch.ones(3, 2, dtype=torch.bool)},
    "int8-A": {"A": torch.ones(2, 4, dtype=torch.int8)},
    "complex-A": {"A": torch.ones(2, 4, dtype=torch.complex64)},
    "uint8-B": {"B": torch.ones(3, 2, dtype=torch.uint8)},
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_save_refuses_non_finite_and_non_float_tensors_and_writes_nothing(case, tmp_path):
    with pytest.raises(ValueError, match=r"a\.safetensors: layer '0' [AB] (is|has)"):
        fl.save(tmp_path / "a.safetensors", _lora(**BAD_TENSORS[case]), CFG)
    assert snapshot(tmp_path) == {}


def _config(**change):
    fields = json.loads(CFG.to_json())
    fields.update(change)
    return json.dumps(fields)


def _without(field):
    fields = json.loads(CFG.to_json())
    del fields[field]
    return json.dumps(fields)


GOOD_TENSORS = {"0.A": torch.zeros(2, 4), "0.B": torch.zeros(3, 2)}
BAD_FILES = {
    # (tensors, header metadata, message)
    "config-null": (GOOD_TENSORS, {"format": fio.FORMAT, "config": "null"}, "JSON object"),
    "no-config-key": (GOOD_TENSORS, {"format": fio.FORMAT}, "no 'config'"),
    "config-5": (GOOD_TENSORS, {"format": fio.FORMAT, "config": "5"}, "JSON object"),
    "config-not-json": (GOOD_TENSORS, {"format": fio.FORMAT, "config": "{rank"}, "not valid JSON"),
    "targets-5": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _config(targets=5)}, "targets"),
    "rank_pattern-list": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _config(rank_pattern=[1, 2])}, "rank_pattern"),
    "use_rslora-string": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _config(use_rslora="false")}, "use_rslora"),
    "rank-string": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _config(rank="2")}, "rank"),
    "alpha-missing": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _without("alpha")}, "lacks fields"),
    "use_rslora-missing": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _without("use_rslora")}, "lacks fields"),
    "unknown-field": (GOOD_TENSORS, {"format": fio.FORMAT, "config": _config(fancy=1)}, "unknown LoraConfig"),
    "format-missing": (GOOD_TENSORS, {"config": CFG.to_json()}, "not a funclora adapter"),
    "format-other": (GOOD_TENSORS, {"format": "pt", "config": CFG.to_json()}, "not a funclora adapter"),
    "nan-tensor": ({**GOOD_TENSORS, "0.A": torch.full((2, 4), float("nan"))}, {"format": fio.FORMAT, "config": CFG.to_json()}, "non-finite"),
    "inf-tensor": ({**GOOD_TENSORS, "0.B": torch.full((3, 2), float("inf"))}, {"format": fio.FORMAT, "config": CFG.to_json()}, "non-finite"),
    "int64-tensor": ({**GOOD_TENSORS, "0.A": torch.zeros(2, 4, dtype=torch.int64)}, {"format": fio.FORMAT, "config": CFG.to_json()}, "not a float"),
    "bool-tensor": ({**GOOD_TENSORS, "0.B": torch.zeros(3, 2, dtype=torch.bool)}, {"format": fio.FORMAT, "config": CFG.to_json()}, "not a float"),
    "missing-B": ({"0.A": torch.zeros(2, 4)}, {"format": fio.FORMAT, "config": CFG.to_json()}, "needs both A and B"),
    "extra-tensor": ({**GOOD_TENSORS, "0.bias": torch.zeros(3)}, {"format": fio.FORMAT, "config": CFG.to_json()}, "unexpected tensor"),
    "no-tensors": ({}, {"format": fio.FORMAT, "config": CFG.to_json()}, "holds no tensors"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_load_refuses_a_hostile_adapter_file_naming_it(case, tmp_path):
    tensors, meta, message = BAD_FILES[case]
    path = tmp_path / f"{case}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=message) as error:
        fl.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "header-only", "huge-header-length", "folder"])
def test_load_refuses_what_is_no_safetensors_file(case, tmp_path):
    path = tmp_path / "a.safetensors"
    if case == "folder":
        path.mkdir()
    else:
        good = _good(tmp_path / "good.safetensors").read_bytes()
        path.write_bytes({"empty": b"", "text": b"hello\n", "truncated": good[: len(good) // 2],
                          "header-only": good[:60], "huge-header-length": (2**60).to_bytes(8, "little") + good[8:]}[case])
    with pytest.raises(ValueError, match="a.safetensors"):
        fl.load(path)


def test_load_of_a_fifo_does_not_block(tmp_path):
    fifo = tmp_path / "a.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        fl.load(fifo)


def test_the_same_adapter_saved_twice_gives_the_same_bytes(tmp_path):
    lora = _lora(B=torch.randn(3, 2))
    meta = {f"key{i}": str(i) for i in range(20)}
    fl.save(tmp_path / "a.safetensors", lora, CFG, metadata=meta)
    fl.save(tmp_path / "b.safetensors", lora, CFG, metadata=dict(reversed(list(meta.items()))))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded, cfg = fl.load(tmp_path / "b.safetensors")
    assert torch.equal(loaded["0"]["B"], lora["0"]["B"]) and cfg == CFG


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umasks_permissions(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        _good(tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == mode


def test_a_temporary_file_left_by_a_killed_run_is_removed_by_the_next_write(tmp_path):
    dead = 2**22 + 12345  # above Linux's pid_max default: no such process
    stale = tmp_path / f".a.safetensors.{dead}{fio.TMP_SUFFIX}"
    stale.write_bytes(b"half an adapter")
    alive = tmp_path / f".a.safetensors.{os.getppid()}{fio.TMP_SUFFIX}"  # a running process's: kept
    alive.write_bytes(b"being written")
    _good(tmp_path / "a.safetensors")
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.safetensors", alive.name])


def _disk_full(monkeypatch, where=None):
    real = os.fsync

    def fsync(fd):
        if where is None or os.readlink(f"/proc/self/fd/{fd}").startswith(str(where)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_leaves_the_previous_adapter_and_no_temporary_file(tmp_path, monkeypatch):
    before = snapshot(_good(tmp_path / "a.safetensors").parent)
    _disk_full(monkeypatch)
    with pytest.raises(OSError, match=r"a\.safetensors: cannot write it \(No space left on device\)"):
        fl.save(tmp_path / "a.safetensors", _lora(B=torch.zeros(3, 2)), CFG)
    assert snapshot(tmp_path) == before


def test_save_or_keep_keeps_the_adapter_elsewhere_and_names_where(tmp_path, monkeypatch):
    out, spare = tmp_path / "out", tmp_path / "spare"
    out.mkdir(), spare.mkdir()
    monkeypatch.setattr(fio.tempfile, "tempdir", str(spare))
    _disk_full(monkeypatch, where=out)
    lora = _lora(B=torch.ones(3, 2))
    with pytest.raises(OSError, match="No space left on device.*the adapter was kept in") as error:
        fio.save_or_keep(out / "a.safetensors", lora, CFG)
    [kept] = spare.glob("funclora-kept-*")
    assert str(kept) in str(error.value) and snapshot(out) == {}
    assert torch.equal(fl.load(kept)[0]["0"]["B"], lora["0"]["B"])


def test_save_or_keep_says_so_when_nowhere_can_take_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fio.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    _disk_full(monkeypatch)
    with pytest.raises(OSError, match="could not be kept"):
        fio.save_or_keep(tmp_path / "a.safetensors", _lora(), CFG)
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("case, message", [
    ("folder", "is a folder"), ("fifo", "not a regular file"), ("png", "not a funclora adapter; pass --force"),
    ("empty", "not a funclora adapter"), ("parent-is-file", "is not a folder"),
])
def test_check_output_refuses_what_must_not_be_overwritten(case, message, tmp_path):
    target = tmp_path / "out.safetensors"
    if case == "folder":
        target.mkdir()
    elif case == "fifo":
        os.mkfifo(target)
    elif case == "png":
        target.write_bytes(b"\x89PNG\r\n\x1a\n holiday photo")
    elif case == "empty":
        target.write_bytes(b"")
    else:
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "out.safetensors"
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=message):
        fio.check_output(target)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["missing", "adapter", "png-forced", "new-folders"])
def test_check_output_allows_a_new_file_an_adapter_or_force(case, tmp_path):
    target = tmp_path / ("a/b/out.safetensors" if case == "new-folders" else "out.safetensors")
    if case == "adapter":
        _good(target)
    elif case == "png-forced":
        target.write_bytes(b"\x89PNG")
    before = snapshot(tmp_path)
    fio.check_output(target, force=case == "png-forced")
    assert snapshot(tmp_path) == before  # the probe leaves nothing


def test_a_second_writer_of_the_same_file_is_refused_then_allowed_after(tmp_path):
    target = tmp_path / "out.safetensors"
    with fio.lock_output(target):
        with pytest.raises(ValueError, match=f"another funclora run \\(pid {os.getpid()}\\)"):
            with fio.lock_output(tmp_path / "." / "out.safetensors"):
                pass
    with fio.lock_output(target):
        pass
    assert snapshot(tmp_path) == {}
