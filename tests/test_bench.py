"""scripts/bench.py end to end on a tiny net: the table, the JSON and the sweep plot (no timing checks)."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
TINY = ["--backbone", "tiny", "--size", "16", "--batch", "2", "--rounds", "1", "--steps", "1", "--warmup", "0",
        "--threads", "1"]


def _bench(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *args], capture_output=True, text=True,
                          timeout=300, check=True)


def test_help_names_every_variant():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for variant in ("forward", "floor", "funclora", "peft", "naive", "full", "merged-inference", "compile"):
        assert variant in out


def test_a_run_prints_the_table_and_writes_every_measurement(tmp_path):
    path = tmp_path / "bench.json"
    out = _bench("--variants", "forward,floor,funclora,peft", "--json", str(path)).stdout
    assert "| variant | time/step (median) | × forward | × floor | × peft |" in out
    data = json.loads(path.read_text())
    rows = {row["variant"]: row for row in data["summary"]}
    assert set(rows) == {"forward", "floor", "funclora", "peft"}
    assert all("error" not in row for row in rows.values()), rows
    assert rows["floor"]["x_floor"] == 1.0 and rows["peft"]["x_peft"] == 1.0
    assert rows["funclora"]["trainable"] == rows["peft"]["trainable"]  # the same adapters
    assert rows["funclora"]["lowrank_flops"] > 0 and rows["funclora"]["maxrss_mb"] > 0
    assert len(data["runs"]) == 4


def test_a_rank_sweep_plots_time_against_counted_flops(tmp_path):
    png = tmp_path / "rank.png"
    out = _bench("--sweep", "rank", "--values", "1,4", "--variants", "floor,funclora", "--plot", str(png)).stdout
    assert "GFLOP" in out and png.read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_are_refused_in_one_line():
    bad = subprocess.run([sys.executable, str(SCRIPT), "--variants", "forward,nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown ['nope']" in bad.stderr


def test_many_compares_k_at_once_with_k_in_a_row(tmp_path):
    path = tmp_path / "scale.json"
    out = subprocess.run([sys.executable, str(SCRIPT), "--many", "1,2", "--workloads", "head", "--size", "32",
                          "--batch", "2", "--rounds", "1", "--steps", "1", "--threads", "1", "--json", str(path)],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    assert "| workload | K | K in a row | K at once |" in out
    rows = json.loads(path.read_text())["many"]["rows"]
    assert [(r["workload"], r["k"]) for r in rows] == [("head", 1), ("head", 2)]
    assert all("error" not in r and r["at_once_s"] > 0 and r["at_once_mb"] > 0 for r in rows), rows
