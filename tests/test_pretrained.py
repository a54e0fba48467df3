"""Released pretrained models from local files: PANNs CNN14 against the reference package
(``panns-inference`` with torchlibrosa, random weights saved in the original checkpoint layout),
EfficientAT's front-end against an independent NumPy transcription, and the errors a wrong file
gets. All on real ESC-10 audio, written as 32 kHz WAVs of 10 s and 3 s.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from soundtag import audio
from soundtag.errors import DataError, ParameterError
from soundtag.features.melspec import LogMel
from soundtag.features.numpy_melspec import NumpyLogMel
from soundtag.inference.fold_models import audioset_labels, load_pretrained
from soundtag.prediction.tagger import load_tagger
from soundtag.resolve import resolve_recipe

PANNS_ARGS = {
    "panns-cnn14": dict(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000),
    "panns-cnn14-16k": dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000),
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def panns_models(tmp_path_factory):
    """The reference package's models module, imported with a HOME that holds AudioSet's label
    CSV (written from our shipped list), since its import reads it there and downloads it otherwise."""
    home = tmp_path_factory.mktemp("home")
    (home / "panns_data").mkdir()
    from importlib import resources

    (home / "panns_data" / "class_labels_indices.csv").write_bytes(
        (resources.files("soundtag") / "data" / "audioset_labels.csv").read_bytes()
    )
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        for name in [m for m in sys.modules if m.startswith("panns_inference")]:
            del sys.modules[name]
        config = importlib.import_module("panns_inference.config")
        models = importlib.import_module("panns_inference.models")
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old
    assert config.labels == audioset_labels()  # the reference reads the list we ship
    return models


@pytest.fixture(scope="module")
def clips_32k(esc10_root, tmp_path_factory):
    """A 10 s and a 3 s 32 kHz mono WAV made from real ESC-10 clips."""
    from soundtag.manifest import read_manifest

    m = read_manifest(esc10_root)
    parts = [audio.load(c.path, sample_rate=32000, trim_db=None).samples for c in list(m)[:3]]
    joined = np.concatenate(parts)
    folder = tmp_path_factory.mktemp("clips32k")
    paths = {}
    for name, seconds in (("ten", 10.0), ("three", 3.0)):
        path = folder / f"{name}.wav"
        sf.write(path, joined[: int(seconds * 32000)], 32000, subtype="FLOAT")
        paths[name] = path
    return paths


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (fresh ones would hide a misplaced bn0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.startswith(("spectrogram_extractor", "logmel_extractor")) or t.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * (5.0 if name.startswith("bn0") else 0.1))
            elif name.startswith("bn0"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def _reference_checkpoint(panns_models, tmp_path, arch="panns-cnn14", cls="Cnn14", seed=0):
    torch.manual_seed(seed)
    ref = _randomize(getattr(panns_models, cls)(**PANNS_ARGS[arch.replace("-dlm", "")], classes_num=527), seed)
    path = tmp_path / f"{cls}.pth"
    torch.save({"model": ref.state_dict()}, path)  # the layout of Cnn14_mAP=0.431.pth
    return ref, path


def _reference(ref, path, key="clipwise_output"):
    samples, rate = sf.read(path, dtype="float32")
    with torch.no_grad():
        return ref(torch.from_numpy(samples)[None])[key][0].numpy()


# --- PANNs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["ten", "three"])
def test_cnn14_tags_as_the_reference_does_on_real_clips(panns_models, clips_32k, tmp_path, clip):
    ref, ckpt = _reference_checkpoint(panns_models, tmp_path)
    expected = _reference(ref, clips_32k[clip])
    got = load_tagger(ckpt, arch="panns-cnn14").tag(clips_32k[clip]).probs
    assert got.shape == (527,)
    assert np.abs(got - expected).max() < 1e-4
    assert expected.std() > 1e-3  # random weights that still discriminate: the check is not vacuous


@pytest.mark.slow  # half a minute of CNN14 on 2 cores: make test runs it, make test-fast does not
def test_cnn14_dlm_clip_and_framewise_outputs_equal_the_reference(panns_models, clips_32k, tmp_path):
    ref, ckpt = _reference_checkpoint(panns_models, tmp_path, "panns-cnn14-dlm", "Cnn14_DecisionLevelMax", seed=1)
    path = clips_32k["ten"]
    expected_clip = _reference(ref, path)
    expected_frames = _reference(ref, path, "framewise_output")
    run = load_pretrained(ckpt, "panns-cnn14-dlm")
    net = run.ensemble.models[0].eval()
    samples = audio.load(path, sample_rate=32000, trim_db=None).samples
    spec = LogMel.from_recipe(run.recipe)(torch.from_numpy(samples)[None])
    with torch.no_grad():
        frames = torch.sigmoid(net.framewise_logits(spec[:, None]))[0].numpy()
        clip = torch.sigmoid(net(spec[:, None]))[0].numpy()
    assert frames.shape == expected_frames.shape == (1001, 527)
    assert np.abs(frames - expected_frames).max() < 1e-4
    assert np.abs(clip - expected_clip).max() < 1e-4

    # the timeline: the model's own 0.32 s segments, covering the file; the same after ONNX export
    from soundtag.prediction.export import export_onnx

    onnx_path = export_onnx(ckpt, tmp_path / "dlm.onnx", arch="panns-cnn14-dlm")
    for tagger in (load_tagger(ckpt, arch="panns-cnn14-dlm"), load_tagger(onnx_path)):
        tags = tagger.tag(path, timeline=True)
        assert len(tags.timeline) == 1001 // 32, tagger.engine
        assert tags.timeline[0][0] == 0.0 and abs(tags.timeline[1][0] - 0.32) < 1e-9
        segments = np.stack([p for _, _, p in tags.timeline])
        assert np.abs(segments - expected_frames[: 31 * 32 : 32]).max() < 1e-4, tagger.engine
        assert np.abs(tags.probs - expected_clip).max() < 1e-4, tagger.engine


@pytest.mark.slow  # half a minute of CNN14 on 2 cores: make test runs it, make test-fast does not
def test_cnn14_onnx_export_tags_as_the_reference_without_torch_engine(panns_models, clips_32k, tmp_path):
    from soundtag.prediction.export import export_onnx

    ref, ckpt = _reference_checkpoint(panns_models, tmp_path, seed=2)
    onnx_path = export_onnx(ckpt, tmp_path / "cnn14.onnx", arch="panns-cnn14")
    tagger = load_tagger(onnx_path)
    assert tagger.engine == "onnx" and tagger.labels == audioset_labels()
    for clip in ("ten", "three"):
        expected = _reference(ref, clips_32k[clip])
        assert np.abs(tagger.tag(clips_32k[clip]).probs - expected).max() < 1e-4, clip


def test_cnn14_through_the_command_line(panns_models, clips_32k, tmp_path, soundtag_main):
    ref, ckpt = _reference_checkpoint(panns_models, tmp_path, seed=3)
    path = clips_32k["three"]
    expected = dict(zip(audioset_labels(), _reference(ref, path)))
    code, out, err = soundtag_main("tag", ckpt, "--arch", "panns-cnn14", path, "--format", "json", "--top", "527")
    assert code == 0, err
    tags = json.loads(out)[0]["tags"]
    assert len(tags) == 527
    assert max(abs(t["score"] - expected[t["label"]]) for t in tags) < 1e-4

    # events above a threshold over time: file,start,end,label,probability
    code, out, err = soundtag_main(
        "tag", ckpt, "--arch", "panns-cnn14", path, "--timeline", "--format", "csv", "--threshold", "0.5"
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "file,start,end,label,probability"
    for line in lines[1:]:
        start, end, probability = float(line.split(",")[1]), float(line.split(",")[2]), float(line.rsplit(",", 1)[1])
        assert 0 <= start < end <= 3.0 + 1e-6 and probability >= 0.5


def test_a_checkpoint_of_another_front_end_is_refused_with_the_arch_that_fits(panns_models, tmp_path):
    _, ckpt16 = _reference_checkpoint(panns_models, tmp_path, "panns-cnn14-16k", seed=4)
    with pytest.raises(DataError, match="fits --arch panns-cnn14-16k"):
        load_pretrained(ckpt16, "panns-cnn14")
    assert load_pretrained(ckpt16, "panns-cnn14-16k").recipe.audio.sample_rate == 16000


def test_wrong_and_broken_files_get_errors_that_say_what_to_do(panns_models, tmp_path):
    from soundtag.models import create_model

    torch.save(create_model("efficientat-mn04", num_classes=527).state_dict(), tmp_path / "mn04.pt")
    with pytest.raises(ParameterError, match=r"missing \(bn0\.weight.*--arch"):
        load_pretrained(tmp_path / "mn04.pt", "panns-cnn14")
    _, ckpt = _reference_checkpoint(panns_models, tmp_path)
    (tmp_path / "cut.pth").write_bytes(ckpt.read_bytes()[: 1 << 20])
    with pytest.raises(DataError, match="cannot be read.*truncated"):
        load_pretrained(tmp_path / "cut.pth", "panns-cnn14")
    with pytest.raises(ParameterError, match="is not a pretrained model.*panns-cnn14"):
        load_pretrained(ckpt, "panns-cnn15")
    # a checkpoint of 527 classes does not tag with 50 (fine-tuning resets the head instead)
    from soundtag.models.pretrained import load_checkpoint

    with pytest.raises(ParameterError, match="another class count: fine-tuning resets it"):
        load_checkpoint(create_model("panns-cnn14", num_classes=50), ckpt)
    reset = load_checkpoint(create_model("panns-cnn14", num_classes=50), ckpt, new_head=True)
    assert sorted(reset) == ["fc_audioset.bias", "fc_audioset.weight"]


def test_audioset_labels_ship_with_the_package():
    labels = audioset_labels()
    assert len(labels) == len(set(labels)) == 527
    assert labels[0] == "Speech" and labels[137] == "Music" and labels[-1] == "Field recording"


# --- EfficientAT's front-end ------------------------------------------------------------------


def _efficientat_reference(x: np.ndarray) -> np.ndarray:
    """EfficientAT's AugmentMelSTFT at evaluation, transcribed loop by loop in float64: the
    pre-emphasis conv1d [-0.97, 1], torch.stft (centre, reflect, symmetric Hann 800 centred in
    1024), power, Kaldi mel banks 0-15000 Hz with a zero Nyquist column, ln(x + 1e-5), (x + 4.5) / 5."""
    x = x.astype(np.float64)
    x = x[1:] - 0.97 * x[:-1]
    n_fft, hop, win = 1024, 320, 800
    padded = np.pad(x, (n_fft // 2, n_fft // 2), mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = [0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1)) for n in range(win)]
    frames = 1 + (len(padded) - n_fft) // hop
    power = np.stack([np.abs(np.fft.rfft(padded[t * hop : t * hop + n_fft] * window)) ** 2 for t in range(frames)], 1)

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    lo, hi, bins = mel(0.0), mel(15000.0), 128
    delta = (hi - lo) / (bins + 1)
    bank = np.zeros((bins, n_fft // 2 + 1))
    for i in range(bins):
        left_m, center_m, right_m = lo + i * delta, lo + (i + 1) * delta, lo + (i + 2) * delta
        for k in range(n_fft // 2):
            m = mel(k * 32000 / n_fft)
            bank[i, k] = max(0.0, min((m - left_m) / (center_m - left_m), (right_m - m) / (right_m - center_m)))
    return (np.log(bank @ power + 1e-5) + 4.5) / 5


def test_efficientat_front_end_equals_a_transcription_of_its_maths(clips_32k):
    recipe = resolve_recipe(arch="efficientat-mn10").recipe
    samples = audio.load(clips_32k["three"], sample_rate=32000, trim_db=None).samples
    expected = _efficientat_reference(samples)
    assert expected.shape == (128, 300)  # pre-emphasis drops one sample: 95999 // 320 + 1
    with torch.no_grad():
        ours = LogMel.from_recipe(recipe)(torch.from_numpy(samples)[None])[0].numpy()
    numpy_ours = NumpyLogMel.from_recipe(recipe)(samples)
    assert ours.shape == numpy_ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-4
    assert np.abs(numpy_ours - expected).max() < 1e-4
    assert expected.std() > 0.1


def test_reflect_padding_of_a_batch_equals_each_clip_alone(clips_32k):
    """Batched extraction zero-pads shorter clips; reflection must still mirror each clip's own end."""
    recipe = resolve_recipe(arch="panns-cnn14").recipe
    logmel = LogMel.from_recipe(recipe)
    samples = audio.load(clips_32k["three"], sample_rate=32000, trim_db=None).samples
    short = samples[:40000]
    batch = torch.zeros(2, len(samples))
    batch[0], batch[1, :40000] = torch.from_numpy(samples), torch.from_numpy(short)
    with torch.no_grad():
        out = logmel(batch, torch.tensor([len(samples), 40000]))
        alone = logmel(torch.from_numpy(short)[None])[0]
    frames = logmel.n_frames(40000)
    assert torch.allclose(out[1, :, :frames], alone, atol=1e-4)
    assert np.abs(NumpyLogMel.from_recipe(recipe)(short) - alone.numpy()).max() < 1e-3


# --- fine-tuning from a released checkpoint, end to end ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,recipe_name", [("panns-cnn14", "panns-cnn14-ft"), ("efficientat-mn10", "efficientat-mn10-ft")]
)
def test_fine_tuning_a_pretrained_checkpoint_runs_end_to_end(
    arch, recipe_name, subset_csv, feature_cache, tmp_path, soundtag_main
):
    """ESC-10 clips from a random-weight checkpoint in the released layout: the head is replaced,
    the backbone starts from the file, and the run has out-of-fold metrics, an ONNX export and tags."""
    from soundtag.manifest import read_manifest
    from soundtag.models import create_model
    from soundtag.recipe import load_recipe
    from soundtag.training import train

    torch.manual_seed(5)
    released = create_model(arch, num_classes=527)
    ckpt = tmp_path / "released.pt"
    torch.save({"model": released.state_dict()} if arch.startswith("panns") else released.state_dict(), ckpt)
    recipe = load_recipe(
        recipe_name, ["training.epochs=2", "training.batch_size=8", "view.duration=1.0", f"training.checkpoint={ckpt}"]
    )
    result = train(read_manifest(subset_csv), recipe, tmp_path / "run", cache_dir=feature_cache, progress=False)
    assert result.folds_trained == [0, 1]
    assert result.metrics["complete"] and result.metrics["all"]["clips"] == 40
    assert 0 <= result.metrics["all"]["map@3"] <= 1

    # the backbone started from the file: a layer the head does not touch moved only a little
    from soundtag.inference.fold_models import load_run

    tuned = load_run(result.run_dir).ensemble.models[0].state_dict()
    first = next(k for k in tuned if k.endswith("weight") and tuned[k].ndim == 4)
    start = released.state_dict()[first]
    assert tuned["fc_audioset.weight" if arch.startswith("panns") else "classifier.5.weight"].shape[0] == 4
    assert (tuned[first] - start).abs().max() < 0.5 * start.abs().max()

    # the cleaning loop works on it as on any run: suspects ranked from its out-of-fold predictions
    code, out, err = soundtag_main("suspects", result.run_dir, "--no-audio")
    assert code == 0, err
    import csv

    with open(result.run_dir / "suspects.csv", newline="") as fh:
        suspects = list(csv.DictReader(fh))
    ids = {c.id for c in read_manifest(subset_csv)}
    assert suspects and {row["clip_id"] for row in suspects} <= ids

    code, out, err = soundtag_main("export", result.run_dir, "--out", tmp_path / "tuned.onnx")
    assert code == 0, err
    clip = read_manifest(subset_csv).clips[0]
    code, out, err = soundtag_main("tag", tmp_path / "tuned.onnx", clip.path, "--format", "json", "--top", "4")
    assert code == 0, err
    tags = json.loads(out)[0]["tags"]
    assert len(tags) == 4 and abs(sum(t["score"] for t in tags) - 1) < 1e-4


def test_embed_writes_pre_logit_embeddings_with_the_clip_ids(clips_32k, tmp_path, soundtag_main):
    from soundtag.models import create_model

    torch.manual_seed(6)
    net = create_model("efficientat-mn10", num_classes=527).eval()
    torch.save(net.state_dict(), tmp_path / "mn10.pt")
    folder = clips_32k["ten"].parent
    code, out, err = soundtag_main(
        "embed", tmp_path / "mn10.pt", folder, "--arch", "efficientat-mn10", "--out", tmp_path / "emb.npy"
    )
    assert code == 0, err
    vectors = np.load(tmp_path / "emb.npy")
    rows = (tmp_path / "emb.csv").read_text().splitlines()
    assert rows[0] == "row,clip_id,path" and [r.split(",")[1] for r in rows[1:]] == ["ten.wav", "three.wav"]
    assert vectors.shape == (2, net.num_features) and vectors.dtype == np.float32
    # the embedding is the model's own pre-logit vector of the whole clip
    recipe = resolve_recipe(arch="efficientat-mn10").recipe
    samples = audio.load(clips_32k["three"], sample_rate=32000, trim_db=None).samples
    with torch.no_grad():
        spec = LogMel.from_recipe(recipe)(torch.from_numpy(samples)[None])[:, None]
        expected = net.forward_head(net.forward_features(spec), pre_logits=True)[0].numpy()
    # random weights make tiny embeddings (about 1e-9): compare relative to their size
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(vectors[1] - expected).max() < 1e-3 * scale
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-2 * scale  # two clips, two embeddings
