"""Export a run's fold ensemble to one self-contained ONNX file.

The graph is :class:`~soundtag.inference.fold_models.FoldEnsemble` (normalisation and every
fold model): input ``chunks`` ``(n, n_mels, frames)`` float32 dB, output ``fold_probs``
``(folds, n, classes)``. Everything else tagging needs rides in the model's metadata under
``soundtag``: the labels, multi-label flag, the full recipe (audio handling, log-mel, view)
and the mel filterbank, so :func:`~soundtag.prediction.tagger.load_tagger` needs neither the
run directory nor PyTorch nor librosa.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from soundtag._io import atomic_path
from soundtag.features.numpy_melspec import NumpyLogMel, frontend_frames
from soundtag.prediction.quantize import CALIBRATION_CLIPS
from soundtag.prediction.tagger import ONNX_METADATA_KEY
from soundtag.runs import EnsembleDir, RunDir

OPSET = 18


def export_onnx(
    run: str | Path,
    out: str | Path | None = None,
    *,
    arch: str | None = None,
    quantize: str | None = None,
    int8_mode: str | None = None,
    calibrate: Sequence[str | Path] = (),
    calibration_clips: int = CALIBRATION_CLIPS,
    progress: bool = False,
) -> Path:
    """Write ``run``'s fold models as ``out`` (default ``<run>/model.onnx``) and check it.

    With ``arch``, ``run`` is a released pretrained checkpoint (``Cnn14_mAP=0.431.pth``) and the
    model takes the whole clip (any number of frames); ``out`` defaults to the file's name with
    ``.onnx``. The check runs a batch of noise chunks (:func:`noise_chunks`) through PyTorch and ONNX Runtime and
    refuses to keep a file whose probabilities differ by more than 1e-4.

    With ``quantize="int8"`` the file written is the int8 model (:mod:`soundtag.prediction.quantize`):
    ``int8_mode`` ``static`` (the default when clips are at hand) calibrates on
    ``calibration_clips`` clips, from ``calibrate`` (audio files or folders) or else the run's own
    training clips, and checks it against the float model on other clips; ``dynamic`` needs no
    clips, and is what a pretrained file without ``calibrate`` gets.
    """
    if quantize is not None:
        return _export_int8(run, out, arch, quantize, int8_mode, calibrate, calibration_clips, progress)
    if arch is None and EnsembleDir(run).is_ensemble():
        return _export_blend(EnsembleDir(run), out)
    import onnx
    import onnxruntime as ort
    import torch

    from soundtag.errors import SoundtagError
    from soundtag.inference.fold_models import load_pretrained, load_run
    from soundtag.models.base import segment_frames

    loaded = load_pretrained(run, arch) if arch else load_run(run)
    recipe = loaded.recipe
    out = Path(out) if out else (Path(run).with_suffix(".onnx") if arch else RunDir(run).onnx_model)
    f = recipe.features
    frames = (
        recipe.chunk_frames
        if recipe.view.kind == "x"
        else frontend_frames(recipe.view_samples, f.hop_length, f.preemphasis)
    )
    example = noise_chunks(recipe, 3, frames)
    dims = {0: torch.export.Dim("n", min=1)}
    if loaded.whole_clip:  # any length: the frames are dynamic too (at least the one second tagging pads to)
        dims[2] = torch.export.Dim(
            "frames", min=frontend_frames(recipe.audio.sample_rate, f.hop_length, f.preemphasis), max=1 << 20
        )
    basis = NumpyLogMel.from_recipe(recipe).mel_basis.astype(np.float32)
    meta = {
        "format": 1,
        "labels": loaded.labels,
        "multilabel": loaded.multilabel,
        "recipe": recipe.model_dump(mode="json"),
        "folds": len(loaded.checkpoints),
        "mel_basis": base64.b64encode(basis.tobytes()).decode("ascii"),
        "mel_basis_shape": list(basis.shape),
        "source": str(Path(run).absolute()),
        "exported": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "whole_clip": loaded.whole_clip,
    }
    ensemble = loaded.ensemble.eval()
    outputs = ["fold_probs"]
    per = segment_frames(ensemble.models[0])
    if loaded.whole_clip and per:
        meta["segment_frames"] = per

        class WithSegments(torch.nn.Module):
            """A decision-level model's fold probabilities and its segment probabilities
            ``(n, frames // segment_frames, classes)``: the timeline ``tag --timeline`` shows."""

            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, chunks):
                return self.inner(chunks), torch.sigmoid(self.inner.models[0].segment_logits(chunks[:, None]))

        ensemble, outputs = WithSegments(ensemble).eval(), ["fold_probs", "segment_probs"]
    with atomic_path(out) as tmp:
        # torch.export-based exporter (the TorchScript one is deprecated); the number of chunks
        # is dynamic, so one model takes an LH crop, every X chunk or a whole timeline.
        with torch.no_grad():
            program = torch.onnx.export(
                ensemble,
                (example,),
                input_names=["chunks"],
                output_names=outputs,
                dynamic_shapes=(dims,),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
        model = program.model_proto
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(meta)
        model.producer_name = "soundtag"
        onnx.save(model, str(tmp))
        # another length than the example's when the frames are dynamic
        check = noise_chunks(recipe, 5, frames + (37 if loaded.whole_clip else 0), seed=1)
        with torch.no_grad():
            expected = ensemble(check)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"chunks": check.numpy()})
        worst = max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got))
        if worst > 1e-4:
            raise SoundtagError(
                f"{out}: ONNX Runtime and PyTorch differ by {worst:.2e} (> 1e-4); "
                "the model was not written. Please report this with the model name."
            )
    return out


def _export_int8(run, out, arch, quantize, int8_mode, calibrate, n_clips, progress) -> Path:
    """The int8 model of ``run`` (each run's, for a blend): the float export, then quantisation."""
    from soundtag.errors import DataError, ParameterError
    from soundtag.prediction.quantize import (
        CHECK_CLIPS,
        QUANT_MODES,
        calibration_chunks,
        calibration_clips,
        quantize_model,
        split_check,
    )
    from soundtag.prediction.tagger import audio_files, load_tagger

    if quantize != "int8":
        raise ParameterError(f"--quantize takes int8, got {quantize!r}")
    if int8_mode is not None and int8_mode not in QUANT_MODES:
        raise ParameterError(f"--int8-mode takes {' or '.join(QUANT_MODES)}, got {int8_mode!r}")
    if arch is None and EnsembleDir(run).is_ensemble():
        blend = EnsembleDir(run)
        members = blend.members()
        if out is None or Path(out).suffix == ".onnx":
            raise ParameterError(
                f"{blend.path} blends {len(members)} runs, one int8 model file each: give a folder with --out"
            )
        folder = Path(out)
        names = _member_names([r for r, _ in members])
        for (member, _), name in zip(members, names):
            _export_int8(member, folder / name, None, quantize, int8_mode, calibrate, n_clips, progress)
        _write_blend_info(blend, folder, names)
        return folder
    default_out = Path(run).with_suffix(".int8.onnx") if arch else RunDir(run).path / "model.int8.onnx"
    out = Path(out) if out else default_out
    if calibrate:
        paths, labels, source = [str(p) for p in audio_files(calibrate)], None, "the clips given"
        if not paths:
            raise DataError(f"no audio files in {', '.join(map(str, calibrate))} to calibrate on")
    elif arch is None:
        rundir = RunDir(run).require()
        plan = rundir.fold_plan()
        # A run that scored only some folds (--fold) trained on the others: calibrate on those,
        # so the clips it is scored on play no part in the int8 model.
        scored = set(rundir.finished_folds()) if len(rundir.finished_folds()) < rundir.n_folds() else set()
        clips = [c for c in rundir.manifest() if c.id in plan and plan[c.id][1] and plan[c.id][0] not in scored]
        paths, labels, source = [c.path for c in clips], [c.labels[0] for c in clips], "the run's training clips"
    else:
        paths, labels, source = [], None, None
    mode = int8_mode or ("static" if paths else "dynamic")
    if mode == "static" and not paths:
        raise DataError(
            f"{run} is a pretrained file with no training clips: give --calibrate with clips like the ones "
            "to tag (a few hundred), or --int8-mode dynamic"
        )
    picked = calibration_clips(paths, labels, n_clips + CHECK_CLIPS) if paths else []
    with tempfile.TemporaryDirectory(prefix="soundtag-export-") as tmp:
        fp32 = export_onnx(run, Path(tmp) / "fp32.onnx", arch=arch)
        tagger = load_tagger(fp32)
        calib_paths, check_paths = split_check(picked, n_clips)
        calib, skipped = calibration_chunks(tagger, calib_paths, progress=progress)
        check, _ = calibration_chunks(tagger, check_paths, progress=False)
        if mode == "static" and not calib:
            raise DataError(f"none of the {len(calib_paths)} calibration clips could be read: {skipped[0]}")
        quantize_model(
            fp32,
            out,
            mode=mode,
            calibration=calib if mode == "static" else None,
            check=check,
            extra_metadata={"calibration_source": source, "unreadable_clips": len(skipped)},
        )
    return out


def _member_names(runs: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for i, run in enumerate(runs):
        names.append(f"{run.name}.onnx" if f"{run.name}.onnx" not in names else f"{run.name}-{i}.onnx")
    return names


def _write_blend_info(blend: EnsembleDir, folder: Path, names: list[str]) -> None:
    """``ensemble.json`` of an exported blend: each member's file and weight."""
    members = blend.members()
    EnsembleDir(folder).write_info(
        {
            "runs": [{"path": n, "weight": w} for n, (_, w) in zip(names, members)],
            "blend": blend.info().get("blend", {}),
            "exported_from": str(blend.path.absolute()),
            "exported": dt.datetime.now().isoformat(timespec="seconds"),
        }
    )


def _export_blend(blend: EnsembleDir, out: str | Path | None) -> Path:
    """A blend of runs (LH + X): every run exported; with ``out``, a folder that tags alone.

    The views cut and scale the sound differently, so each keeps its own model file; without
    ``out`` each run's ``model.onnx`` is written where ``soundtag export RUN`` writes it (``tag
    RUN --engine onnx`` then uses them), with ``out`` the folder gets ``<run>.onnx`` for every
    run and an ``ensemble.json`` with their weights, so ``soundtag tag FOLDER`` needs nothing else.
    """
    from soundtag.errors import ParameterError

    members = blend.members()
    if out is None:
        for run, _ in members:
            export_onnx(run)
        return blend.path
    out = Path(out)
    if out.suffix == ".onnx":
        raise ParameterError(
            f"{blend.path} blends {len(members)} runs, one model file each: give a folder, --out {out.with_suffix('')}"
        )
    out.mkdir(parents=True, exist_ok=True)
    names = _member_names([r for r, _ in members])
    for (run, _), name in zip(members, names):
        export_onnx(run, out / name)
    _write_blend_info(blend, out, names)
    return out


def noise_chunks(recipe, n: int, frames: int, seed: int = 0):
    """``(n, n_mels, frames)`` log-mels of white noise at levels from -60 to -6 dBFS through the
    recipe's own front-end: inputs in the range the model sees (values of another front-end's
    range, such as raw dB fed to EfficientAT's scaled log, blow its activations up and its float
    errors with them)."""
    import torch

    from soundtag.features.melspec import LogMel

    g = torch.Generator().manual_seed(seed)
    samples = frames * recipe.features.hop_length + recipe.features.n_fft
    levels = torch.logspace(-3, -0.3, n)[:, None]
    with torch.no_grad():
        spec = LogMel.from_recipe(recipe)(torch.randn(n, samples, generator=g) * levels)
    return spec[:, :, :frames].contiguous()
