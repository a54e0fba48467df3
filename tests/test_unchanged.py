"""What a user gets stays the same while the code is reshaped: seeded tiny runs' out-of-fold
predictions, tagged files' probabilities (PyTorch and ONNX Runtime), test-time-shifted
out-of-fold predictions and dataset predictions, compared with a record made before.

Three tiny runs cover the paths a reshaping touches: ``esc50-cpu-lh`` (global statistics, sound
extents, features held on the device), ``esc50-lh`` streamed from the store (per-sample
normalisation in NumPy) and ``esc50-cpu-x`` (per-mel-bin statistics, chunks averaged per clip).

The record is ``tests/data/unchanged.npz``; ``SOUNDTAG_RECORD=1 pytest tests/test_unchanged.py``
writes it again, which is only right before a change that must not change these numbers. On a
machine whose CPU has the record's instruction sets the numbers must agree to 1e-6 (they are
bit-for-bit where the computation did not change). Elsewhere oneDNN takes other kernels, and two
epochs of training carry their rounding differences forward, so only 1e-3 is asked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RECORD = Path(__file__).parent / "data" / "unchanged.npz"
#: The CPU features that decide which kernels PyTorch runs.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "fma")

#: name: (recipe, overrides); every run trains fold 0 for two epochs in fp32.
RUNS = {
    "cpu-lh": ("esc50-cpu-lh", ["features.n_mels=32"]),
    "lh-streamed": (
        "esc50-lh",
        [
            "features.n_mels=32",
            "training.model=vgg",
            "training.model_args={widths: [8, 16]}",
            "training.batch_size=8",
            "training.device_data=off",
        ],
    ),
    "cpu-x": ("esc50-cpu-x", ["features.n_mels=32"]),
}


def machine() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    import torch

    return json.dumps({"isa": sorted(flags & set(ISA_FLAGS)), "torch": torch.__version__.split("+")[0]})


def outputs(subset_csv: Path, work: Path) -> dict[str, np.ndarray]:
    """Every number the record holds, computed with the code as it is."""
    from soundtag.inference.clips import predict_out_of_fold
    from soundtag.manifest import read_manifest
    from soundtag.prediction import export_onnx, load_tagger, predict_dataset
    from soundtag.recipe import load_recipe
    from soundtag.training import train

    manifest = read_manifest(subset_csv)
    clip = manifest[3].path
    out = {}
    for name, (recipe, overrides) in RUNS.items():
        run = work / name
        train(
            manifest,
            load_recipe(recipe, overrides + ["training.epochs=2", "training.precision=32"]),
            run,
            cache_dir=work / "cache",
            progress=False,
            folds=[0],
        )
        out[f"{name}/oof"] = np.load(run / "fold-0" / "oof.npy")
        out[f"{name}/tag"] = load_tagger(run).tag(clip).probs
    x = work / "cpu-x"
    out["cpu-x/tag-timeline"] = np.stack([p for *_, p in load_tagger(x).tag(clip, timeline=True).timeline])
    out["cpu-x/oof-tta2"] = predict_out_of_fold(x, tta=2, progress=False).probs
    out["cpu-x/predict"] = predict_dataset(x, manifest, out=work / "predictions.csv", progress=False).predictions.probs
    out["cpu-x/tag-onnx"] = load_tagger(export_onnx(x, work / "x.onnx")).tag(clip).probs
    return out


def test_a_users_numbers_are_those_of_the_record(subset_csv, tmp_path):
    got = outputs(subset_csv, tmp_path)
    if os.environ.get("SOUNDTAG_RECORD") == "1":
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        np.savez(RECORD, machine=np.array(machine()), **got)
        return
    assert RECORD.is_file(), f"{RECORD} is missing: record it with SOUNDTAG_RECORD=1 pytest {__file__}"
    record = np.load(RECORD, allow_pickle=False)
    same_machine = str(record["machine"]) == machine()
    tolerance = 1e-6 if same_machine else 1e-3
    assert sorted(got) == sorted(k for k in record.files if k != "machine")
    for key, value in got.items():
        np.testing.assert_allclose(
            value,
            record[key],
            rtol=0,
            atol=tolerance,
            err_msg=f"{key} changed (record made on {record['machine']}, this is {machine()})",
        )
