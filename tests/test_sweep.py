"""`benchmarks/sweep.py`, the tool defaults are chosen with: every setting is read by
`vaelab train`'s own parser before anything trains, and a setting that comes to the base's
configuration is not trained twice (real processes, real runs on the bundled digits)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).resolve().parents[1] / "benchmarks" / "sweep.py"


def sweep(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SWEEP), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("axis, said", [
    ("weight_decy=0.1", "weight-decy"),        # a misspelt key
    ("activation=relu,gelo", "gelo"),          # one wrong value among good ones
    ("weight_decay=-1", "weight-decay"),       # a value the config refuses
])
def test_a_wrong_setting_stops_the_sweep_before_anything_trains(tmp_path, axis, said):
    r = sweep(tmp_path / "s", "--base", "--dataset digits --epochs 1", "--axis", axis)
    assert r.returncode == 2, r.stderr
    assert said in r.stderr and "Traceback" not in r.stderr
    assert not any((tmp_path / "s").glob("*/metrics.jsonl"))  # nothing trained


@pytest.mark.slow
def test_a_setting_equal_to_the_base_is_the_base(tmp_path):
    r = sweep(tmp_path / "s", "--base", "--dataset digits --epochs 1 --hidden 32 --latent-dim 4",
              "--axis", "weight_decay=0,0.05", "--axis", "latent_dim=4")
    assert r.returncode == 0, r.stderr
    assert "weight_decay=0: the same configuration as the base" in r.stderr
    assert "latent_dim=4: the same configuration as the base" in r.stderr
    runs = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert runs == ["base__seed=0", "weight_decay=0.05__seed=0"]
    table = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert sorted(table) == ["base", "weight_decay=0.05"]
    assert "| weight_decay=0.05 |" in r.stdout and "| base |" in r.stdout
