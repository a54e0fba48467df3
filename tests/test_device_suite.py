"""The GPU suite of issue 12 (`benchmarks/device_suite.sh`) in its smoke mode, on the CPU: every
step runs end to end on a handful of real ESC-50 clips and leaves its results where the suite
says, without touching docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_suite_runs_end_to_end_in_smoke_mode(data_root, tmp_path):
    doc = REPO / "docs" / "benchmarks.md"
    before = doc.read_bytes()
    out = tmp_path / "out"
    env = os.environ | {"SOUNDTAG_DATA": str(data_root), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_suite.sh"), str(out), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    throughput = json.loads((out / "throughput.json").read_text())
    (row,) = throughput["rows"]
    assert row["loader"] > 0 and row["device"] > 0 and row["bare"] > 0 and row["sync_free"] == "n/a"
    for recipe in ("esc50-gpu-lh", "esc50-gpu-x"):
        result = json.loads((out / f"{recipe}.json").read_text())
        assert result["smoke"] and result["clips"] == 100, "every clip of the 5-fold smoke run is scored"
        assert result["kept"] == "last" and result["ema"] and result["best_checkpoint"] == "last.ckpt"
        assert 0 <= result["top1"] <= 1
    ensemble = json.loads((out / "ensemble.json").read_text())
    assert len(ensemble["weights"]) == 2 and 0 <= ensemble["top1"] <= 1 and ensemble["clips"] == 100
    tta = json.loads((out / "tta.json").read_text())
    assert [row["tta"] for row in tta["rows"]] == [0, 2, 4] and tta["clips"] == 100
    assert tta["rows"][0]["top1"] == pytest.approx(
        [
            result["top1"]
            for result in (json.loads((out / f"{r}.json").read_text()) for r in ("esc50-gpu-lh", "esc50-gpu-x"))
        ],
        abs=0.011,
    )
    text = (out / "benchmarks.md").read_text()
    for section in (
        "train-throughput",
        "train-esc50-esc50-gpu-lh",
        "train-esc50-esc50-gpu-x",
        "train-esc50-ensemble",
        "tta-esc50",
    ):
        assert f"<!-- {section}:start -->" in text
    assert "[suite +" in (out / "suite.log").read_text() and "done:" in (out / "suite.log").read_text()
    assert not (out / "runs" / "features").exists()
    assert doc.read_bytes() == before
