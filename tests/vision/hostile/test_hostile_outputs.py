"""Hostile output paths: `train --out`, `import --out` and `export --peft` check the target before
the work, never overwrite what is not theirs without --force, lock against a second run, keep a
trained adapter that a full disk refused, write the same bytes twice and leave no temporary file.
"""
import errno
import os
import stat

import pytest
import torch

import funclora as fl
from funclora import io as fio
from hostile import assert_finite_files, cli, fails, snapshot, tiny_images, train_args

PNG = b"\x89PNG\r\n\x1a\n my holiday photo"


@pytest.fixture
def images(tmp_path):
    return tiny_images(tmp_path / "images")


@pytest.fixture
def no_training(monkeypatch):
    """Fail the case if training starts: the output must be refused before it."""
    import funclora.train

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the output was checked")

    monkeypatch.setattr(funclora.train, "make_step", refuse)
    monkeypatch.setattr("funclora.vision.seed.fit", refuse)


REFUSED = {  # how to spoil --out, and what the one line says
    "folder": (lambda p: p.mkdir(), "is a folder"),
    "png": (lambda p: p.write_bytes(PNG), "not a funclora adapter; pass --force"),
    "text": (lambda p: p.write_text("my notes\n"), "not a funclora adapter"),
    "empty": (lambda p: p.write_bytes(b""), "not a funclora adapter"),
    "truncated-adapter": (lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "not a funclora adapter"),
    "safetensors-not-ours": (lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "),
                             "not a funclora adapter"),
    "fifo": (lambda p: os.mkfifo(p), "not a regular file"),
    "parent-is-file": (lambda p: p.parent.parent.joinpath("file").write_text("x"), "is not a folder"),
    "link-to-folder": (lambda p: (p.parent / "real").mkdir() or os.symlink("real", p), "is a folder"),
}


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("mode", ["layers", "seed"])
def test_train_refuses_an_output_it_must_not_replace_before_training(case, mode, images, tmp_path, no_training):
    out = tmp_path / "out" / "a.safetensors"
    out.parent.mkdir()
    spoil, message = REFUSED[case]
    if case == "parent-is-file":
        out = tmp_path / "file" / "a.safetensors"
    spoil(out)
    before = snapshot(tmp_path)
    line = fails(cli(*train_args(images, out, "--mode", mode)), "--out", out)
    assert message in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["png", "text", "empty"])
def test_force_replaces_a_non_adapter_file(case, images, tmp_path):
    out = tmp_path / "a.safetensors"
    REFUSED[case][0](out)
    code, _, err = cli(*train_args(images, out, "--force"))
    assert code == 0 and err == ""
    assert fl.load(out)[1].targets == ("_fc",)


@pytest.mark.parametrize("case", ["existing-adapter", "new-nested-folders", "relative"])
def test_allowed_outputs_are_written(case, images, tmp_path, monkeypatch):
    out = {"existing-adapter": tmp_path / "a.safetensors", "new-nested-folders": tmp_path / "x" / "y" / "a.safetensors",
           "relative": "a.safetensors"}[case]
    monkeypatch.chdir(tmp_path)
    if case == "existing-adapter":
        assert cli(*train_args(images, out, "--seed", 1))[0] == 0
    code, _, err = cli(*train_args(images, out))
    assert code == 0 and err == "", err
    assert assert_finite_files(tmp_path) == 1


def test_a_second_run_on_the_same_out_is_refused_and_the_first_keeps_it(images, tmp_path):
    out = tmp_path / "a.safetensors"
    with fio.lock_output(out):  # as a first run holds it while it trains
        line = fails(cli(*train_args(images, out)), "--out", "another funclora run")
        assert not out.exists()
        fails(cli(*train_args(images, tmp_path / "." / "a.safetensors")), "another funclora run")
    assert cli(*train_args(images, out))[0] == 0
    assert "pid" in line


def test_import_refuses_to_overwrite_a_photo_and_locks_too(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    cfg = fl.LoraConfig(rank=2)
    fl.to_peft(fl.init_lora(model, cfg), cfg, tmp_path / "peft", model=model)
    (tmp_path / "photo.png").write_bytes(PNG)
    before = snapshot(tmp_path)
    fails(cli("import", tmp_path / "peft", "--out", tmp_path / "photo.png"), "photo.png", "--force")
    assert snapshot(tmp_path) == before
    with fio.lock_output(tmp_path / "b.safetensors"):
        fails(cli("import", tmp_path / "peft", "--out", tmp_path / "b.safetensors"), "another funclora run")
    assert cli("import", tmp_path / "peft", "--out", tmp_path / "photo.png", "--force")[0] == 0
    assert fl.load(tmp_path / "photo.png")[0]["0"]["A"].shape == (2, 4)


def _full_disk(monkeypatch, under):
    real = os.fsync

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.startswith(str(under)) and name.endswith(fio.TMP_SUFFIX):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_at_save_keeps_the_trained_adapter_and_names_where(images, tmp_path, monkeypatch):
    out, spare = tmp_path / "out", tmp_path / "spare"
    out.mkdir(), spare.mkdir()
    monkeypatch.setattr(fio.tempfile, "tempdir", str(spare))
    _full_disk(monkeypatch, out)  # the check's probe passes; the adapter's write fails
    code, _, err = cli(*train_args(images, out / "a.safetensors"))
    assert code == 1
    [kept] = spare.glob("funclora-kept-*")  # (torch may keep its own caches in the temporary folder)
    line = fails((code, "", err), "a.safetensors", "No space left on device", str(kept))
    assert "kept in" in line and snapshot(out) == {}
    assert fl.load(kept)[1].targets == ("_fc",)


def test_the_same_training_twice_writes_byte_identical_files(images, tmp_path):
    for name in ("a", "b"):
        assert cli(*train_args(images, tmp_path / f"{name}.safetensors"))[0] == 0
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_adapter_gets_the_umasks_permissions(umask, mode, images, tmp_path):
    old = os.umask(umask)
    try:
        assert cli(*train_args(images, tmp_path / "a.safetensors"))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.safetensors").st_mode) == mode


def test_a_temporary_file_left_by_a_killed_train_is_removed_by_the_next(images, tmp_path):
    stale = tmp_path / f".a.safetensors.{2**22 + 99}{fio.TMP_SUFFIX}"
    stale.write_bytes(b"half an adapter")
    assert cli(*train_args(images, tmp_path / "a.safetensors"))[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "images"]


@pytest.mark.parametrize("case", ["other-files", "a-file", "existing-peft"])
def test_export_never_clobbers_a_folder_that_is_not_a_peft_adapter(case, images, tmp_path):
    adapter = tmp_path / "a.safetensors"
    assert cli(*train_args(images, adapter))[0] == 0
    target = tmp_path / "peft"
    if case == "other-files":
        target.mkdir()
        (target / "thesis.tex").write_text("years of work")
    elif case == "a-file":
        target.write_text("a file")
    else:
        assert cli("export", adapter, "--peft", target)[0] == 0
    before = snapshot(tmp_path)
    result = cli("export", adapter, "--peft", target)
    if case == "existing-peft":
        assert result[0] == 0 and snapshot(tmp_path) == before  # replaced by the same bytes
    else:
        fails(result, "peft")
        assert snapshot(tmp_path) == before


def test_report_folder_that_is_a_file_is_refused_before_training(images, tmp_path, no_training):
    (tmp_path / "report").write_text("x")
    fails(cli(*train_args(images, tmp_path / "a.safetensors", "--report", tmp_path / "report")), "--report")
    assert not (tmp_path / "a.safetensors").exists()
