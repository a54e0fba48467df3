"""The run directory has one owner (soundtag.runs), and a run trained in part can be scored."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from soundtag.errors import DataError, ParameterError
from soundtag.runs import EnsembleDir, RunDir

SRC = Path(__file__).resolve().parents[1] / "src" / "soundtag"
RUN_FILES = (
    "run.json",
    "recipe.yaml",
    "manifest.jsonl",
    "folds.csv",
    "done.json",
    "oof.npy",
    "best.ckpt",
    "last.ckpt",
    "oof.csv",
    "metrics.json",
    "suspects.csv",
    "ensemble.json",
    "model.onnx",
    "confusion.png",
    "learning_curves.png",
)


def test_no_module_but_runs_spells_a_run_file_name():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "runs.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            # quoted names only: docstrings may describe the layout in ``double backticks``
            if any(re.search(rf"[\"']{re.escape(name)}[\"'/]", line) for name in RUN_FILES):
                offenders.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_no_stage_after_training_imports_training_internals():
    # Later stages read runs through RunDir. Self-verification trains runs of its own, through
    # the package's public API (`from soundtag.training import train`), never its modules.
    importers = [p for p in (SRC / "prediction").glob("*.py")] + [p for p in (SRC / "cleaning").glob("*.py")]
    imports = re.compile(r"^\s*(from soundtag\.training\.|import soundtag\.training)", re.M)
    bad = [f"{p.relative_to(SRC)}" for p in importers if imports.search(p.read_text(encoding="utf-8"))]
    assert not bad, bad


def _fake_run(path: Path, folds: dict[str, int], finished: dict[int, dict[str, list[float]]]) -> RunDir:
    """A run directory written by hand, with the files training writes (no model needed)."""
    from soundtag.manifest import Clip, Manifest
    from soundtag.recipe import load_recipe

    clips = [Clip(id=c, path=f"/nowhere/{c}", labels=("a",) if i % 2 == 0 else ("b",)) for i, c in enumerate(folds)]
    manifest = Manifest(tuple(clips), labels=("a", "b"), name="fake")
    run = RunDir(path)
    run.start(load_recipe("esc50-lh"), manifest, {"cache_dir": str(path / "cache"), "data": "fake.csv"})
    run.write_folds(folds, np.array(list(folds.values())), np.ones(len(folds), bool))
    for k, probs in finished.items():
        run.fold_dir(k).mkdir()
        run.finish_fold(k, np.array(list(probs.values())), {"clips": list(probs), "best_checkpoint": "best.ckpt"})
    return run


def test_out_of_fold_in_manifest_order_and_partial_runs(tmp_path):
    run = _fake_run(tmp_path / "run", {"c1": 0, "c2": 1, "c3": 0, "c4": 1}, {0: {"c3": [0.2, 0.8], "c1": [0.9, 0.1]}})
    (run.path / "fold-notes").mkdir()  # not a fold: ignored, not parsed
    assert run.finished_folds() == [0] and run.unfinished_folds() == [1] and run.n_folds() == 2
    with pytest.raises(DataError, match=r"fold\(s\) \[1\] are not finished.*--resume"):
        run.out_of_fold()
    oof = run.out_of_fold(partial=True)
    assert list(oof.manifest.ids) == ["c1", "c3"] and not oof.complete and oof.finished == [0]
    np.testing.assert_allclose(oof.probs, [[0.9, 0.1], [0.2, 0.8]])
    assert run.best_checkpoints() == [run.fold_dir(0) / "best.ckpt"]
    run.finish_fold(1, np.array([[0.5, 0.5], [0.3, 0.7]]), {"clips": ["c4", "c2"], "best_checkpoint": "best.ckpt"})
    full = run.out_of_fold()
    assert full.complete and list(full.manifest.ids) == ["c1", "c2", "c3", "c4"]
    np.testing.assert_allclose(full.probs[1], [0.3, 0.7])  # c2 came second in fold 1's list
    assert list(full.folds) == [0, 1, 0, 1]


def test_oof_predictions_of_a_partial_run_only_when_asked(tmp_path):
    from soundtag.prediction.ensemble import load_oof_predictions

    run = _fake_run(tmp_path / "run", {"c1": 0, "c2": 1, "c3": 0, "c4": 1}, {0: {"c3": [0.2, 0.8], "c1": [0.9, 0.1]}})
    with pytest.raises(DataError, match=r"not finished"):
        load_oof_predictions(run.path)
    pred, in_training = load_oof_predictions(run.path, partial=True)
    assert pred.ids == ["c1", "c3"] and in_training.tolist() == [True, True]
    np.testing.assert_array_equal(pred.targets(), [[1, 0], [1, 0]])  # c1 and c3 are labelled "a"
    np.testing.assert_allclose(pred.probs, [[0.9, 0.1], [0.2, 0.8]])


def test_ensemble_of_partial_runs_blends_their_finished_folds_only_when_asked(tmp_path):
    from soundtag.prediction.ensemble import ensemble_runs

    folds = {"c1": 0, "c2": 1, "c3": 0, "c4": 1}  # c1, c3 labelled "a"; c2, c4 "b"
    # Run A takes c3 for "b", run B is right on both: equal weights are right on both clips.
    a = _fake_run(tmp_path / "a", folds, {0: {"c1": [0.9, 0.1], "c3": [0.4, 0.6]}})
    b = _fake_run(tmp_path / "b", folds, {0: {"c3": [0.9, 0.1], "c1": [0.6, 0.4]}})
    with pytest.raises(DataError, match=r"not finished.*--partial"):
        ensemble_runs([a.path, b.path], tmp_path / "e0")
    assert not (tmp_path / "e0").exists()  # nothing written for a refused ensemble

    result = ensemble_runs([a.path, b.path], tmp_path / "e", partial=True)
    assert [m["top1"] for m in result.run_metrics] == [0.5, 1.0]
    assert result.equal_weight_metrics["clips"] == 2 and result.equal_weight_metrics["top1"] == 1.0
    blended = list(csv.DictReader((tmp_path / "e" / "oof.csv").open()))
    assert [row["clip_id"] for row in blended] == ["c1", "c3"]
    info = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert info["blend"]["partial"] is True and info["blend"]["clips"] == 2

    # Runs that finished different folds have different clips: refused, naming the cause.
    c = _fake_run(tmp_path / "c", folds, {1: {"c2": [0.1, 0.9], "c4": [0.2, 0.8]}})
    with pytest.raises(
        DataError, match=r"--partial blends runs that have finished the same folds; finished: .*a: \[0\], .*c: \[1\]"
    ):
        ensemble_runs([a.path, c.path], tmp_path / "e2", partial=True)


def test_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        RunDir(tmp_path / "missing").require()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a soundtag run"):
        RunDir(tmp_path / "empty").require()
    with pytest.raises(DataError, match="not a soundtag ensemble"):
        EnsembleDir(tmp_path / "empty").info()


def test_partial_evaluation_names_its_folds_and_writes_no_oof_csv(tmp_path):
    from soundtag.training import evaluate_run

    run = _fake_run(tmp_path / "run", {"c1": 0, "c2": 1, "c3": 0, "c4": 1}, {0: {"c1": [0.9, 0.1], "c3": [0.2, 0.8]}})
    metrics = evaluate_run(run, plots=True)
    assert metrics["folds"] == [0] and metrics["complete"] is False
    assert metrics["all"]["clips"] == 2 and metrics["all"]["top1"] == 0.5  # c1 (a) right, c3 (a) taken for b
    assert json.loads(run.metrics_file.read_text())["folds"] == [0]
    assert not run.oof_csv.exists()  # only a complete run has a prediction for every clip
    assert run.confusion_png.read_bytes()[:4] == b"\x89PNG"


def test_bad_devices_is_a_message_not_a_traceback(soundtag_main):
    from soundtag.hardware import Hardware

    with pytest.raises(ParameterError, match="devices='two'"):
        Hardware(devices="two")
    assert Hardware(devices="2").devices == 2
    code, _, err = soundtag_main("train", "--data", "esc10", "--devices", "two")
    assert code == 2 and "devices='two'" in err and "Traceback" not in err


# --- a real run trained on one fold --------------------------------------------------------

FAST = [
    "training.epochs=1",
    "training.batch_size=8",
    "training.model_args={widths: [8, 16]}",
    "training.model=vgg",
    "features.n_mels=32",
]


@pytest.mark.slow
def test_one_fold_run_is_scored_on_its_fold_then_evaluate_agrees(esc10_root, tmp_path, soundtag_main):
    from soundtag.manifest import read_manifest

    m = read_manifest(esc10_root)
    taken, rows = Counter(), []
    for c in m:
        lab, fold = c.labels[0], 1 + (c.fold - 1) % 2
        if lab in m.labels[:3] and taken[lab, fold] < 4:
            taken[lab, fold] += 1
            rows.append({"path": c.path, "labels": lab, "fold": fold})
    data = tmp_path / "subset.csv"
    with open(data, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels", "fold"])
        w.writeheader()
        w.writerows(rows)
    run = tmp_path / "run"
    code, out, err = soundtag_main(
        "train",
        "--data",
        data,
        "-r",
        "esc50-lh",
        "--fold",
        "0",
        "--out",
        run,
        "--cache",
        tmp_path / "cache",
        "--no-progress",
        *sum((["-o", o] for o in FAST), []),
    )
    assert code == 0, out + err
    assert "metrics of fold(s) [0] only" in out and "--resume" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds"] == [0] and metrics["all"]["clips"] == 12  # 3 classes x 4 clips in fold 1

    code, out, _ = soundtag_main("evaluate", run)
    assert code == 0 and "metrics of fold(s) [0] only" in out

    code, _, err = soundtag_main("suspects", run, "--no-audio")
    assert code == 2 and "fold(s) [1] are not finished" in err


def test_map_at_3_with_fewer_labels_than_3():
    from soundtag.evaluation import map_at_k

    targets = np.array([[1, 0], [0, 1]])
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])  # first right at rank 1, second at rank 2
    assert map_at_k(targets, probs, k=3) == pytest.approx(0.75)


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_even_when_the_monitor_did_not_improve(
    esc10_root, tmp_path, write_subset_csv, fast
):
    """Resume continues from the last epoch trained, not from the last that improved
    (Lightning's own save_last skips epochs that saved no best checkpoint)."""
    import torch

    from soundtag.manifest import read_manifest
    from soundtag.recipe import load_recipe
    from soundtag.training import train

    data = read_manifest(write_subset_csv(esc10_root, tmp_path / "tiny.csv", classes=2, per_class_per_fold=4))
    # a learning rate this small (and no augmentation) leaves MAP@3 where it was after the
    # first epochs: the later epochs save no best checkpoint
    recipe = load_recipe(
        "esc50-lh",
        fast
        + [
            "training.epochs=4",
            "training.lr=1e-12",
            "training.monitor=val_map3",
            "training.augment.mixup.enabled=false",
            "training.augment.erasing.enabled=false",
            "training.augment.shift.enabled=false",
        ],
    )
    run = RunDir(train(data, recipe, tmp_path / "run", cache_dir=tmp_path / "cache", folds=[0], progress=False).run_dir)
    best = torch.load(run.checkpoint(0, "best"), map_location="cpu", weights_only=True)
    last = torch.load(run.checkpoint(0, "last"), map_location="cpu", weights_only=True)
    assert best["epoch"] < 3, "the monitor stopped improving before the last epoch"
    assert last["epoch"] == 3 and last["global_step"] == 4 * best["global_step"] // (best["epoch"] + 1)
