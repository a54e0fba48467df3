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
from pathlib import Path

import numpy as np

from soundtag._io import atomic_path
from soundtag.features.numpy_melspec import NumpyLogMel, frontend_frames
from soundtag.prediction.tagger import ONNX_METADATA_KEY
from soundtag.runs import EnsembleDir, RunDir

OPSET = 18


def export_onnx(run: str | Path, out: str | Path | None = None, *, arch: str | None = None) -> Path:
    """Write ``run``'s fold models as ``out`` (default ``<run>/model.onnx``) and check it.

    With ``arch``, ``run`` is a released pretrained checkpoint (``Cnn14_mAP=0.431.pth``) and the
    model takes the whole clip (any number of frames); ``out`` defaults to the file's name with
    ``.onnx``. The check runs a batch of noise chunks (:func:`noise_chunks`) through PyTorch and ONNX Runtime and
    refuses to keep a file whose probabilities differ by more than 1e-4.
    """
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
    names: list[str] = []
    for i, (run, _) in enumerate(members):
        name = f"{run.name}.onnx" if f"{run.name}.onnx" not in names else f"{run.name}-{i}.onnx"
        export_onnx(run, out / name)
        names.append(name)
    info = blend.info()
    EnsembleDir(out).write_info(
        {
            "runs": [{"path": n, "weight": w} for n, (_, w) in zip(names, members)],
            "blend": info.get("blend", {}),
            "exported_from": str(blend.path.absolute()),
            "exported": dt.datetime.now().isoformat(timespec="seconds"),
        }
    )
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
