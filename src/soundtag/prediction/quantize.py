"""int8 models: ONNX Runtime's quantisation of an exported soundtag model.

``soundtag export RUN --quantize int8`` writes the float model as :func:`~soundtag.prediction.
export.export_onnx` does, then turns it into an int8 one with ONNX Runtime's quantiser, in one of
two modes:

* ``static`` (the default where clips are at hand): QDQ format, weights int8 per output channel,
  activations uint8 with ranges measured by running the float model over the chunks of real
  clips through the model's own front-end (:func:`calibration_chunks`): a run's own training
  clips, or the clips given with ``--calibrate``. Every convolution then runs in integers. A
  range is cut at the 99.99th percentile of an activation's values over the calibration chunks
  rather than its extremes: one loud outlier otherwise widens the range and coarsens the steps
  for every other value.
* ``dynamic``: weights int8, activation ranges computed for every input at run time. It needs no
  clips, so a pretrained file exported without ``--calibrate`` gets it; ONNX Runtime's CPU
  kernels make it pay mostly for matrix products, not convolutions.

Weights are quantised to 7 bits (``reduce_range``): on x86 CPUs without VNNI (most that are not
recent server parts, AMD before Zen 4 among them) 8-bit weights can saturate the 16-bit
intermediate sums of ONNX Runtime's u8 x s8 kernels; 7 bits cannot, on every CPU, for a small
loss of precision that the check below measures.

The int8 file carries the float model's metadata (labels, recipe, mel basis), so ``soundtag tag
model.onnx`` is unchanged, plus a ``quantization`` entry: the mode, the calibration clips, and how
far its probabilities are from the float model's on chunks it was not calibrated on.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from soundtag._io import atomic_path
from soundtag.errors import DataError, ParameterError

__all__ = [
    "QUANT_MODES",
    "QuantizationReport",
    "calibration_chunks",
    "calibration_clips",
    "quantize_model",
    "split_check",
]

QUANT_MODES = ("static", "dynamic")
#: Clips whose chunks calibrate a static model, and clips kept apart to check it.
CALIBRATION_CLIPS = 300
CHECK_CLIPS = 100
#: Where a static model's activation ranges end: this percentile of each activation's values
#: over the calibration chunks. On the default's LH model for ESC-50 fold 1 (400 clips scored, 300
#: calibration clips; docs/benchmarks.md), int8 top-1 was 85.75% against float's 85.00%; an earlier
#: run of that model lost 1.25 points with the extremes (min/max), and by hand 0.25 with this
#: percentile and 1.25 with entropy calibration.
CALIBRATION_PERCENTILE = 99.99


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_model` did and how close the int8 model stays to the float one.

    Attributes
    ----------
    mode : ``static`` or ``dynamic``
    calibration_clips : clips whose chunks set the activation ranges (0 for dynamic)
    check_clips : clips (not among the calibration ones) both models tagged for the check
    top1_agreement : fraction of the check clips whose best label is the same in both models
    max_prob_diff : largest absolute difference of a probability on the check clips
    fp32_bytes, int8_bytes : file sizes
    """

    mode: str
    calibration_clips: int
    check_clips: int
    top1_agreement: float | None
    max_prob_diff: float | None
    fp32_bytes: int
    int8_bytes: int

    def summary(self) -> str:
        """One line for the command's output."""
        size = f"{self.int8_bytes / 1e6:.1f} MB, {self.fp32_bytes / self.int8_bytes:.1f}x smaller than float"
        how = (
            f"static, calibrated on {self.calibration_clips} clips"
            if self.mode == "static"
            else "dynamic (activation ranges at run time)"
        )
        if self.top1_agreement is None:
            return f"int8 ({how}): {size}; no clips to check it against the float model"
        return (
            f"int8 ({how}): {size}; best label as the float model's on "
            f"{self.top1_agreement:.1%} of {self.check_clips} other clips, probabilities within "
            f"{self.max_prob_diff:.3f}"
        )


def calibration_clips(paths: Sequence[str], labels: Sequence[str] | None, n: int) -> list[str]:
    """``n`` of ``paths`` spread evenly over the labels: one clip of each label in turn, in the
    order given, so that every class's sound sets the activation ranges (no random draw: the
    same run always gives the same model).

    >>> calibration_clips(["a1", "a2", "a3", "b1", "b2"], ["a", "a", "a", "b", "b"], 4)
    ['a1', 'b1', 'a2', 'b2']
    >>> calibration_clips(["x", "y", "z"], None, 2)
    ['x', 'y']
    """
    if n < 1:
        raise ParameterError(f"calibration clips must be at least 1, got {n}")
    if labels is None:
        return list(paths[:n])
    by_label: dict[str, list[str]] = {}
    for path, label in zip(paths, labels):
        by_label.setdefault(label, []).append(path)
    out: list[str] = []
    depth = 0
    while len(out) < n and any(depth < len(v) for v in by_label.values()):
        out += [v[depth] for v in by_label.values() if depth < len(v)][: n - len(out)]
        depth += 1
    return out


def calibration_chunks(tagger, paths: Iterable[str], *, progress: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Each file's chunks ``(n, n_mels, frames)`` as the model sees them, through ``tagger``'s own
    front-end (decode, resample, log-mel, the view's crop or chunks); files that cannot be read
    are left out and named in the second list."""
    from soundtag.errors import SoundtagError
    from soundtag.progress import progress_bar

    chunks, skipped = [], []
    paths = list(paths)
    with progress_bar(progress, len(paths), "calibration clips") as advance:
        for path in paths:
            try:
                chunks.append(np.ascontiguousarray(tagger.chunks(path)[0], dtype=np.float32))
            except (SoundtagError, OSError) as exc:
                skipped.append(f"{path}: {exc}")
            advance(1)
    return chunks, skipped


def split_check(clips: Sequence[str], calibrate: int, check: int = CHECK_CLIPS) -> tuple[list[str], list[str]]:
    """``clips`` (spread over the labels, :func:`calibration_clips`) parted into up to
    ``calibrate`` clips to calibrate on and up to ``check`` others (at most a quarter) to check
    the int8 model on: every k-th clip checks, so both parts keep the spread.

    >>> split_check(["a", "b", "c", "d", "e", "f", "g", "h"], calibrate=4, check=2)
    (['a', 'b', 'c', 'e'], ['d', 'h'])
    >>> split_check(["a", "b"], calibrate=4)
    (['a', 'b'], [])
    """
    n_check = min(check, len(clips) // 4)
    if n_check == 0:
        return list(clips)[:calibrate], []
    step = len(clips) // n_check
    checked = list(clips[step - 1 :: step])[:n_check]
    taken = set(checked)
    return [c for c in clips if c not in taken][:calibrate], checked


class _ChunkReader:
    """ONNX Runtime's calibration reader over a list of chunk arrays: one clip per run."""

    def __init__(self, chunks: list[np.ndarray]):
        self._it = iter(chunks)

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {"chunks": batch}


def quantize_model(
    fp32: str | Path,
    out: str | Path,
    *,
    mode: str = "static",
    calibration: list[np.ndarray] | None = None,
    check: list[np.ndarray] | None = None,
    extra_metadata: dict | None = None,
) -> QuantizationReport:
    """Write an int8 copy of the exported float model ``fp32`` to ``out``.

    Parameters
    ----------
    fp32 : an ONNX file written by :func:`~soundtag.prediction.export.export_onnx`
    out : the int8 file (written atomically)
    mode : ``static`` (needs ``calibration``) or ``dynamic``
    calibration : chunk arrays ``(n, n_mels, frames)``, one per clip, that set the activation ranges
    check : chunk arrays of other clips, on which both models are compared
    extra_metadata : more entries for the ``quantization`` metadata (where the clips came from)
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from soundtag.prediction.tagger import ONNX_METADATA_KEY

    if mode not in QUANT_MODES:
        raise ParameterError(f"quantization mode must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    if mode == "static" and not calibration:
        raise DataError(
            "static int8 needs clips to calibrate on: give --calibrate with a folder of clips like the "
            "ones to tag, or --int8-mode dynamic"
        )
    fp32, out = Path(fp32), Path(out)
    with tempfile.TemporaryDirectory(prefix="soundtag-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and ONNX Runtime's graph optimisation first (BatchNorm folded into the
        # convolutions), as ONNX Runtime asks: otherwise the normalisation stays in float and
        # every convolution's output is quantised twice.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        raw = Path(tmp) / "int8.onnx"
        # A BatchNorm after a pooling (the CPU recipes' pool_before_norm) cannot be folded into
        # its convolution: it stays in float between a dequantise and a quantise, as it is cheap.
        ops = sorted({n.op_type for n in onnx.load(str(prepared)).graph.node} - {"BatchNormalization"})
        if mode == "static":
            quantize_static(
                str(prepared),
                str(raw),
                _ChunkReader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=ops,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            )
        else:
            quantize_dynamic(
                str(prepared),
                str(raw),
                op_types_to_quantize=ops,
                per_channel=True,
                reduce_range=True,
                weight_type=QuantType.QInt8,
            )
        agreement, worst = _compare(fp32, raw, check or [])
        model = onnx.load(str(raw))
        source = onnx.load(str(fp32), load_external_data=False)
        meta = json.loads({p.key: p.value for p in source.metadata_props}[ONNX_METADATA_KEY])
        report = QuantizationReport(
            mode=mode,
            calibration_clips=len(calibration or []) if mode == "static" else 0,
            check_clips=len(check or []),
            top1_agreement=agreement,
            max_prob_diff=worst,
            fp32_bytes=fp32.stat().st_size,
            int8_bytes=0,
        )
        meta["quantization"] = {
            "dtype": "int8",
            "format": "QDQ" if mode == "static" else "dynamic",
            "ranges": f"{CALIBRATION_PERCENTILE:g}th percentile of the calibration chunks"
            if mode == "static"
            else "each input's own, at run time",
        }
        meta["quantization"] |= asdict(report) | (extra_metadata or {})
        del meta["quantization"]["int8_bytes"]
        del model.metadata_props[:]
        for p in source.metadata_props:
            entry = model.metadata_props.add()
            entry.key, entry.value = p.key, json.dumps(meta) if p.key == ONNX_METADATA_KEY else p.value
        model.producer_name = source.producer_name
        with atomic_path(out) as target:
            onnx.save(model, str(target))
    return QuantizationReport(**(asdict(report) | {"int8_bytes": out.stat().st_size}))


def _compare(fp32: Path, int8: Path, check: list[np.ndarray]) -> tuple[float | None, float | None]:
    """Top-1 agreement and the largest probability difference of the two models over ``check``
    (each clip's chunks averaged over chunks and folds, as tagging combines them)."""
    if not check:
        return None, None
    from soundtag.prediction.tagger import onnx_session

    sessions = [onnx_session(p) for p in (fp32, int8)]
    same, worst = 0, 0.0
    for chunks in check:
        a, b = (s.run(["fold_probs"], {"chunks": chunks})[0].mean(axis=(0, 1)) for s in sessions)
        same += int(np.argmax(a) == np.argmax(b))
        worst = max(worst, float(np.abs(a - b).max()))
    return same / len(check), worst
