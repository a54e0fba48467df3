"""Tag audio files with a trained run, an exported ONNX model, or an ensemble of runs.

One pipeline for every engine: decode and crop as the recipe's view does
(:func:`~soundtag.features.views.decode_for_recipe`), log-mel, the view's chunks, then every
fold model's chunk probabilities, combined by :func:`~soundtag.inference.combine.combine_folds`.
The engines differ only in the last two steps' machinery:

* ``torch``: PyTorch's :class:`~soundtag.features.melspec.LogMel` (the one training used) and
  the fold models in eager mode;
* ``onnx``: :class:`~soundtag.features.numpy_melspec.NumpyLogMel` and ONNX Runtime. Nothing
  on this path imports PyTorch.
"""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from soundtag import audio
from soundtag.errors import DataError, ParameterError, SoundtagError
from soundtag.features.numpy_melspec import NumpyLogMel
from soundtag.features.views import decode_for_recipe, eval_chunks
from soundtag.inference.combine import ensemble_clip_probabilities, geometric_mean
from soundtag.recipe import Recipe
from soundtag.runs import EnsembleDir, RunDir

ENGINES = ("torch", "onnx")
#: Key of the JSON blob an exported model carries in its ONNX metadata.
ONNX_METADATA_KEY = "soundtag"


@dataclass
class ClipTags:
    """One file's result: class probabilities and, when asked, a timeline of windows."""

    path: str
    probs: np.ndarray
    #: ``(start seconds, end seconds, probabilities)`` per window, for ``timeline=True``
    timeline: list[tuple[float, float, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TagFailure:
    path: str
    message: str


class ModelTagger:
    """Tags files with one run's fold ensemble.

    Build with :func:`load_tagger`. ``logmel`` turns mono samples into dB ``(n_mels, frames)``;
    ``fold_probs`` turns ``(n, n_mels, frames)`` chunks into ``(folds, n, classes)``.
    """

    def __init__(
        self,
        *,
        recipe: Recipe,
        labels: list[str],
        multilabel: bool,
        logmel: Callable[[np.ndarray], np.ndarray],
        fold_probs: Callable[[np.ndarray], np.ndarray],
        source: str,
        engine: str,
        whole_clip: bool = False,
        framewise: Callable[[np.ndarray], tuple[np.ndarray, int]] | None = None,
    ):
        self.recipe, self.labels, self.multilabel = recipe, list(labels), multilabel
        self.logmel, self.fold_probs, self.source, self.engine = logmel, fold_probs, source, engine
        #: the whole file as one input (pretrained models), instead of the recipe's view
        self.whole_clip = whole_clip
        #: ``spec -> (probabilities (segments, classes), frames per segment)`` of a decision-level
        #: model (PANNs' DecisionLevelMax), whose own segments make the timeline
        self.framewise = framewise

    def __repr__(self) -> str:
        return f"ModelTagger({self.source!r}, engine={self.engine!r}, {len(self.labels)} labels)"

    def chunks(self, path: str | Path) -> tuple[np.ndarray, list[str]]:
        """The view's chunks of a file as the model sees them (before normalisation)."""
        if self.whole_clip:
            wav = self._whole(path)
            return self.logmel(wav.samples)[None], wav.notes
        wav = decode_for_recipe(path, self.recipe)
        return eval_chunks(self.logmel(wav.samples), self.recipe), wav.notes

    def _whole(self, path: str | Path) -> audio.Waveform:
        r = self.recipe
        wav = audio.load(
            path, sample_rate=r.audio.sample_rate, trim_db=r.audio.trim_db, max_duration=r.audio.max_duration
        )
        # Pretrained CNNs pool time 32 times: a clip under a second is centred in one second.
        wav.samples = audio.pad_center(wav.samples, r.audio.sample_rate)
        return wav

    def tag(
        self, path: str | Path, *, timeline: bool = False, tta: int | None = None, hop: float | None = None
    ) -> ClipTags:
        """Probabilities for one file (any format, rate, channels, length); ``tta`` shifted
        copies of every chunk (default: the recipe's ``training.tta``); with ``timeline``, the
        windows over the file, ``hop`` seconds apart (default: the view's overlap)."""
        chunks, notes = self.chunks(path)
        tta = self.recipe.training.tta if tta is None else tta
        probs = ensemble_clip_probabilities(
            self.fold_probs, [chunks], self.recipe, tta=tta, multilabel=self.multilabel
        )[0]
        result = ClipTags(str(path), probs, notes=notes)
        if timeline:
            result.timeline = self._timeline(path, hop)
        return result

    def _timeline(self, path: str | Path, hop: float | None = None) -> list[tuple[float, float, np.ndarray]]:
        """Windows the model's input size long over the whole file (X: its own chunks), each
        scored on its own (:mod:`soundtag.prediction.stream`); a decision-level model's own
        segments (32 frames each for PANNs)."""
        r = self.recipe
        if self.framewise is not None:
            wav = self._whole(path)
            probs, per = self.framewise(self.logmel(wav.samples))
            seconds = per * r.features.hop_length / r.audio.sample_rate
            offset = (len(wav.samples) - round(wav.duration * r.audio.sample_rate)) // 2 / r.audio.sample_rate
            return [
                (max(0.0, i * seconds - offset), min(wav.duration, (i + 1) * seconds - offset), p)
                for i, p in enumerate(probs)
                if i * seconds - offset < wav.duration
            ]
        from soundtag.prediction.stream import WindowGrid, file_timeline

        wav = audio.load(path, sample_rate=r.audio.sample_rate, trim_db=None, max_duration=r.audio.max_duration)
        return file_timeline(self, wav.samples, WindowGrid.from_recipe(r, hop))


class EnsembleTagger:
    """Tags files with several runs blended by a weighted geometric mean (``soundtag ensemble``)."""

    def __init__(self, members: list[ModelTagger], weights: np.ndarray, source: str):
        labels = members[0].labels
        for m in members[1:]:
            if m.labels != labels:
                raise DataError(f"{source}: the runs of this ensemble have different labels")
        self.members, self.weights, self.source = members, np.asarray(weights, dtype=np.float64), source
        self.labels, self.multilabel, self.engine = labels, members[0].multilabel, members[0].engine

    def tag(
        self, path: str | Path, *, timeline: bool = False, tta: int | None = None, hop: float | None = None
    ) -> ClipTags:
        if timeline:
            raise ParameterError("--timeline needs one run or model: an ensemble's runs cut time differently")
        parts = [m.tag(path, tta=tta) for m in self.members]
        probs = geometric_mean(np.stack([p.probs for p in parts]), weights=self.weights, multilabel=self.multilabel)
        return ClipTags(str(path), probs, notes=parts[0].notes)


def load_tagger(source: str | Path, *, engine: str | None = None, threads: int | None = None, arch: str | None = None):
    """A tagger for a run directory, an ensemble directory, a fold ``.ckpt``, an ``.onnx`` file,
    or (with ``arch``) a released pretrained checkpoint such as ``Cnn14_mAP=0.431.pth``.

    ``engine`` defaults to ``onnx`` for ``.onnx`` files and ``torch`` otherwise. With
    ``engine="onnx"`` a run must be exported first (``soundtag export``); a run directory then
    stands for its ``model.onnx``.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(
            f"{source} does not exist; give a run directory, an ensemble directory, "
            "a .ckpt, an exported .onnx model, or a pretrained checkpoint with --arch"
        )
    asked, engine = engine, engine or ("onnx" if source.suffix == ".onnx" else "torch")
    if engine not in ENGINES:
        raise ParameterError(f"engine={engine!r} must be one of {', '.join(ENGINES)}")
    if arch is not None:
        if engine == "onnx":
            raise ParameterError(
                f"the onnx engine runs exported models: run `soundtag export {source} --arch {arch}` "
                "and tag with the .onnx file it writes"
            )
        return _torch_tagger(source, threads, arch)
    if EnsembleDir(source).is_ensemble():
        runs, weights = zip(*EnsembleDir(source).members())
        # each member's own default: an exported blend's members are .onnx files
        members = [load_tagger(r, engine=asked, threads=threads) for r in runs]
        return EnsembleTagger(members, np.array(weights), str(source))
    if engine == "onnx":
        if source.is_dir() and RunDir(source).onnx_model.is_file():  # where `soundtag export RUN` writes
            source = RunDir(source).onnx_model
        if source.suffix != ".onnx":
            raise ParameterError(
                f"the onnx engine runs exported models: run `soundtag export {source}` "
                "and tag with the .onnx file it writes"
            )
        return _onnx_tagger(source, threads)
    if source.suffix == ".onnx":
        raise ParameterError(f"{source} is an ONNX model: tag it with --engine onnx")
    return _torch_tagger(source, threads)


def _torch_tagger(source: Path, threads: int | None, arch: str | None = None) -> ModelTagger:
    import torch

    from soundtag.features.melspec import LogMel
    from soundtag.inference.fold_models import load_pretrained, load_run
    from soundtag.models.base import segment_frames

    run = load_pretrained(source, arch) if arch else load_run(source)
    logmel = LogMel.from_recipe(run.recipe)

    def spectrogram(samples: np.ndarray) -> np.ndarray:
        with _torch_threads(threads), torch.inference_mode():
            return logmel(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None])[0].numpy()

    def fold_probs(chunks: np.ndarray) -> np.ndarray:
        with _torch_threads(threads):
            return run.ensemble.probabilities(chunks)

    framewise = None
    net = run.ensemble.models[0]
    per = segment_frames(net)
    if run.whole_clip and per:

        def framewise(spec: np.ndarray) -> tuple[np.ndarray, int]:
            with _torch_threads(threads), torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(spec, dtype=np.float32))[None, None]
                return torch.sigmoid(net.segment_logits(x)[0]).numpy(), per

    tagger = ModelTagger(
        recipe=run.recipe,
        labels=run.labels,
        multilabel=run.multilabel,
        logmel=spectrogram,
        fold_probs=fold_probs,
        source=str(source),
        engine="torch",
        whole_clip=run.whole_clip,
        framewise=framewise,
    )
    tagger.loaded = run  # the models themselves, for embeddings
    return tagger


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to ``threads`` inside the block only (None: as it is).

    ``torch.set_num_threads`` is process-wide: a tagger that kept it would change the speed of
    everything else the process runs with PyTorch.
    """
    import torch

    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_onnx_external_data(path: str | Path) -> None:
    """Refuse an ONNX model whose tensors keep their data in a file outside the model's folder.

    A tensor of an ONNX model may name a file to read its data from ("external data");
    ``../../etc/passwd`` or ``/home/you/.ssh/id_rsa`` would make any model file read what its
    author chose and hand it to the graph. soundtag's own exports keep every tensor inside the
    model file. Models whose bytes never mention ``location``, the key every external-data entry
    needs, cannot have any and are passed without parsing them; the others are parsed with the
    ``onnx`` package (its import alone takes about a second, too long to pay on every tag).

    Raises
    ------
    DataError
        naming the file, the tensor and the location it points to
    """
    import mmap

    path = Path(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"location") < 0:
                return
    except (OSError, ValueError) as exc:  # missing, unreadable, or empty (mmap of 0 bytes)
        raise DataError(f"{path}: not a readable ONNX model ({exc})") from None
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise DataError(f"{path}: not a readable ONNX model ({exc})") from None
    folder = path.resolve().parent
    for tensor in _onnx_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if Path(location).is_absolute() or (target != folder and folder not in target.parents):
            raise DataError(
                f"{path} was not loaded: its tensor {tensor.name!r} takes its data from {location!r}, "
                f"outside the model's folder {folder}; a model may only read files beside it. "
                "Ask its author for a model with its weights inside the file"
            )


def _onnx_tensors(model):
    """Every tensor of an ONNX model: initializers, sparse ones and node attributes, in the main
    graph, its subgraphs and its functions."""

    def in_nodes(nodes):
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from in_graph(attr.g)
                for g in attr.graphs:
                    yield from in_graph(g)

    def in_graph(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from in_nodes(graph.node)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


def onnx_session(path: str | Path, options=None):
    """An ONNX Runtime session on the CPU for a model file from anywhere, after
    :func:`check_onnx_external_data`."""
    import onnxruntime as ort

    check_onnx_external_data(path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise DataError(f"{path}: not a readable ONNX model ({exc})") from exc


def read_onnx_metadata(path: str | Path, session=None) -> dict:
    """The soundtag metadata of an exported model: labels, recipe, mel filterbank, folds
    (read from ``session`` when the model is open already)."""
    meta = (session or onnx_session(path)).get_modelmeta()
    if ONNX_METADATA_KEY not in meta.custom_metadata_map:
        raise DataError(f"{path}: this ONNX model was not exported by soundtag (no '{ONNX_METADATA_KEY}' metadata)")
    return json.loads(meta.custom_metadata_map[ONNX_METADATA_KEY])


def _onnx_tagger(source: Path, threads: int | None) -> ModelTagger:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT's idle workers spin by default, taking the cores that decoding and the log-mel
    # (NumPy, OpenBLAS) need between two runs: off, tagging a file is twice as fast (measured).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnx_session(source, options)
    info = read_onnx_metadata(source, session)
    recipe = Recipe.model_validate(info["recipe"])
    basis = np.frombuffer(base64.b64decode(info["mel_basis"]), dtype=np.float32).reshape(info["mel_basis_shape"])
    logmel = NumpyLogMel.from_recipe(recipe, mel_basis=basis)

    def fold_probs(chunks: np.ndarray) -> np.ndarray:
        return session.run(["fold_probs"], {"chunks": np.ascontiguousarray(chunks, dtype=np.float32)})[0]

    framewise = None
    if "segment_probs" in [o.name for o in session.get_outputs()]:  # an exported decision-level model

        def framewise(spec: np.ndarray) -> tuple[np.ndarray, int]:
            x = np.ascontiguousarray(spec, dtype=np.float32)[None]
            # models exported before the metadata said so are PANNs' (32 frames a segment)
            return session.run(["segment_probs"], {"chunks": x})[0][0], int(info.get("segment_frames", 32))

    return ModelTagger(
        recipe=recipe,
        labels=info["labels"],
        multilabel=info["multilabel"],
        logmel=logmel,
        fold_probs=fold_probs,
        source=str(source),
        engine="onnx",
        whole_clip=bool(info.get("whole_clip", False)),
        framewise=framewise,
    )


def audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly (any extension), and the audio files found in folders, sorted."""
    from soundtag.manifest.readers import AUDIO_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES))
        else:
            out.append(p)  # a missing file is reported when it is tagged
    return out


def tag_files(
    tagger,
    paths: Iterable[str | Path],
    *,
    timeline: bool = False,
    tta: int | None = None,
    hop: float | None = None,
    on_result: Callable[[ClipTags | TagFailure], None] | None = None,
) -> tuple[list[ClipTags], list[TagFailure]]:
    """Tag every file; one that is missing or cannot be decoded becomes a :class:`TagFailure`
    and the rest are tagged. ``hop``: seconds between the windows of a timeline."""
    results, failures = [], []
    for path in audio_files(paths):
        try:
            item = tagger.tag(path, timeline=timeline, tta=tta, hop=hop)
            results.append(item)
        except SoundtagError as exc:
            if isinstance(exc, ParameterError):
                raise
            item = TagFailure(str(path), str(exc))
            failures.append(item)
        if on_result:
            on_result(item)
    return results, failures


def top_k(probs: np.ndarray, labels: list[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable labels with their probabilities, best first (ties: label order)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(labels[i], float(probs[i])) for i in order]
