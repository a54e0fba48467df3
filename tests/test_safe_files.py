"""Files from strangers: nothing soundtag opens may run code.

Each hostile file carries a payload that creates a canary file when it is unpickled or
constructed. Every command that reads such a file must refuse it with an error naming the file,
exit non-zero, and leave no canary behind.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from soundtag.checkpoints import UnsafeFileError, read_checkpoint, read_soundtag_checkpoint
from soundtag.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "soundtag"


class Payload:
    """Unpickling this runs ``touch CANARY``, as a hostile checkpoint would run anything."""

    def __init__(self, canary: Path):
        self.command = f"touch {canary}"

    def __reduce__(self):
        return os.system, (self.command,)


def poison_checkpoint(path: Path, canary: Path) -> Path:
    """Rewrite the soundtag checkpoint ``path`` with a payload in its hyper-parameters (the
    weights stay, so only the payload can make it fail)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["normalizer"] = Payload(canary)
    torch.save(state, path)
    return path


@pytest.fixture
def canary(tmp_path) -> Path:
    path = tmp_path / "OWNED"
    yield path
    assert not path.exists(), "a hostile file ran code"


@pytest.fixture
def own_run(dirty_run, tmp_path) -> Path:
    """A copy of the session's tiny finished run, free to damage."""
    return Path(shutil.copytree(dirty_run, tmp_path / "run"))


def said(text: str) -> str:
    """A message as one line (the console wraps long ones at spaces)."""
    return re.sub(r"\s*\n\s*", " ", text)


def a_clip(run: Path) -> str:
    from soundtag.runs import RunDir

    return RunDir(run).manifest()[0].path


def test_the_payload_runs_when_unpickled_as_torch_allows_so_the_tests_below_mean_something(tmp_path):
    canary = tmp_path / "OWNED"
    torch.save({"x": Payload(canary)}, tmp_path / "f.pt")
    torch.load(tmp_path / "f.pt", weights_only=False)
    assert canary.exists()


# --- checkpoints ----------------------------------------------------------------------------


def test_the_reader_refuses_objects_and_names_them(tmp_path, canary):
    torch.save({"state_dict": {}, "hyper_parameters": Payload(canary)}, tmp_path / "model.ckpt")
    with pytest.raises(
        UnsafeFileError, match=r"model\.ckpt was not loaded.*posix\.system|model\.ckpt was not loaded.*os\.system"
    ):
        read_checkpoint(tmp_path / "model.ckpt")
    # the pre-zip layout of torch.save is refused the same way
    torch.save({"x": Payload(canary)}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match="legacy.ckpt"):
        read_checkpoint(tmp_path / "legacy.ckpt")
    # harmless objects are refused too: a checkpoint holds tensors and plain data only
    torch.save({"mean": np.zeros(3)}, tmp_path / "numpy.ckpt")
    with pytest.raises(UnsafeFileError, match=r"numpy\.ckpt.*numpy"):
        read_checkpoint(tmp_path / "numpy.ckpt")


def test_a_damaged_or_foreign_file_is_a_clear_data_error(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(DataError, match=r"text\.ckpt cannot be read") as err:
        read_checkpoint(tmp_path / "text.ckpt")
    assert not isinstance(err.value, UnsafeFileError)
    with pytest.raises(DataError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "plain.ckpt")
    with pytest.raises(DataError, match=r"plain\.ckpt is not a soundtag checkpoint"):
        read_soundtag_checkpoint(tmp_path / "plain.ckpt")


def test_soundtags_own_checkpoints_hold_only_tensors_and_plain_data(dirty_run):
    for ckpt in sorted(dirty_run.rglob("*.ckpt")):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == [], ckpt
        record = read_soundtag_checkpoint(ckpt)
        assert record.labels and record.model_weights() and record.epoch >= 0


@pytest.mark.parametrize("command", ["tag-ckpt", "tag", "export", "embed", "predict", "evaluate-tta"])
def test_every_command_refuses_a_payload_in_a_fold_checkpoint(own_run, tmp_path, canary, soundtag_main, command):
    from soundtag.runs import RunDir

    best = poison_checkpoint(RunDir(own_run).best_checkpoints()[0], canary)
    clip = a_clip(own_run)
    args = {
        "tag-ckpt": ["tag", best, clip],
        "tag": ["tag", own_run, clip],
        "export": ["export", own_run, "--format", "onnx", "--out", tmp_path / "m.onnx"],
        "embed": ["embed", own_run, RunDir(own_run).data_source(), "--out", tmp_path / "e.npy"],
        "predict": ["predict", own_run, "--data", RunDir(own_run).data_source(), "--no-progress"],
        "evaluate-tta": ["evaluate", own_run, "--tta", "1"],
    }[command]
    code, out, err = soundtag_main(*args)
    assert code != 0
    assert f"{best} was not loaded" in said(err), err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "e.npy").exists()


def test_resume_refuses_a_payload_in_last_ckpt(own_run, canary, soundtag_main):
    from soundtag.runs import RunDir

    run = RunDir(own_run)
    (run.fold_dir(1) / "done.json").unlink()  # fold 1 unfinished: resume reads its last.ckpt
    last = poison_checkpoint(run.checkpoint(1, "last"), canary)
    code, out, err = soundtag_main("train", "--resume", own_run, "--no-progress")
    assert code == 2
    assert f"{last} was not loaded" in said(err), err
    assert not run.is_finished(1)


@pytest.mark.parametrize("how", ["--init", "training.checkpoint"])
def test_starting_weights_with_a_payload_are_refused(own_run, tmp_path, canary, soundtag_main, how):
    from soundtag.runs import RunDir

    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "extra": Payload(canary)}, weights)
    given = ["--init", weights] if how == "--init" else ["-o", f"training.checkpoint={weights}"]
    code, out, err = soundtag_main(
        "train",
        "--data",
        RunDir(own_run).data_source(),
        "-r",
        "esc50-lh",
        "--out",
        tmp_path / "new",
        "--cache",
        tmp_path / "cache",
        "--no-progress",
        "-o",
        "training.epochs=1",
        *given,
    )
    assert code == 2 and f"{weights} was not loaded" in said(err), err


def test_an_ensemble_refuses_a_member_run_with_a_payload(dirty_run, tmp_path, canary, soundtag_main):
    a = Path(shutil.copytree(dirty_run, tmp_path / "a"))
    b = Path(shutil.copytree(dirty_run, tmp_path / "b"))
    code, out, err = soundtag_main("ensemble", a, b, "--out", tmp_path / "a+b")
    assert code == 0, err
    from soundtag.runs import RunDir

    best = poison_checkpoint(RunDir(b).best_checkpoints()[1], canary)
    code, out, err = soundtag_main("tag", tmp_path / "a+b", a_clip(a))
    assert code == 2 and f"{best} was not loaded" in said(err), err


# --- arrays, recipes, ONNX models -----------------------------------------------------------


def test_an_array_of_pickled_objects_in_a_run_is_refused(own_run, canary, soundtag_main):
    oof = own_run / "fold-0" / "oof.npy"
    np.save(oof, np.array([Payload(canary)], dtype=object), allow_pickle=True)
    code, out, err = soundtag_main("evaluate", own_run)
    assert code == 2 and f"{oof} was not loaded: it holds Python objects" in said(err), err


def test_a_recipe_with_a_python_tag_is_an_error_not_a_call(tmp_path, canary, soundtag_main):
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: evil\ntraining: !!python/object/apply:os.system ['touch {canary}']\n")
    for args in (["recipes", evil], ["train", "--data", "esc10", "-r", evil, "--out", tmp_path / "run"]):
        code, out, err = soundtag_main(*args)
        assert code == 2 and f"{evil} (line 2)" in said(err) and "python/object/apply:os.system" in err, err
    code, out, err = soundtag_main(
        "recipes", "esc50-lh", "-o", f"training.lr=!!python/object/apply:os.system ['touch {canary}']"
    )
    assert code == 2 and "not a plain YAML value" in err, err


def _onnx_with_external_data(path: Path, location: str) -> Path:
    """A one-node ONNX model whose only initializer reads 16 bytes from ``location``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones(4, np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["chunks", "W"], ["fold_probs"])],
        "g",
        [helper.make_tensor_value_info("chunks", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("fold_probs", TensorProto.FLOAT, [4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_an_onnx_model_reading_data_outside_its_folder_is_refused(tmp_path, soundtag_main, esc10_root):
    from soundtag.prediction.tagger import check_onnx_external_data

    clip = next((esc10_root / "audio").rglob("*.ogg"))
    for location in ("../../etc/passwd", "/etc/passwd"):
        evil = _onnx_with_external_data(tmp_path / "models" / "evil.onnx", location)
        with pytest.raises(DataError, match=f"tensor 'W' takes its data from '{re.escape(location)}', outside"):
            check_onnx_external_data(evil)
        code, out, err = soundtag_main("tag", evil, clip)
        assert code == 2 and f"{evil} was not loaded" in said(err), err
    # data beside the model is what the format is for: allowed
    (tmp_path / "models" / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    check_onnx_external_data(_onnx_with_external_data(tmp_path / "models" / "fine.onnx", "weights.bin"))


def test_nothing_in_the_package_can_open_a_file_the_unsafe_way():
    """One reader per format: ``torch.load`` only in checkpoints.py, ONNX Runtime sessions only
    behind the external-data check, and none of the calls that unpickle or build objects."""
    forbidden = re.compile(
        r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|yaml\.load\(|yaml\.unsafe_load|"
        r"load_from_checkpoint\(|pickle\.loads?\(|\bjoblib\b"
    )
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(SRC).as_posix()
        assert not forbidden.search(text), f"{rel}: {forbidden.search(text).group(0)}"
        if "torch.load(" in text:
            assert rel == "checkpoints.py", f"{rel} calls torch.load: read checkpoints with soundtag.checkpoints"
        if "np.load(" in text:
            assert rel == "_io.py", f"{rel} calls np.load: use soundtag._io.load_array"
        if "InferenceSession(" in text:
            # the session of a model soundtag has just written itself (export's check) is the one exception
            assert rel in ("prediction/tagger.py", "prediction/export.py"), rel
