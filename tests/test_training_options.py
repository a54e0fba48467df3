"""Training options on tiny real runs over ESC-10 clips: the optimiser and learning-rate schedule
(as Lightning logged them), early stopping, the checkpoint monitor, relabelling a multi-label
manifest, and starting a classifier of another size from a checkpoint.

Every run trains one fold of 2 ESC-10 classes x 4 clips x 2 folds (16 real clips) with the
tiny VGG of the ``fast`` overrides; the features are computed once per session.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from soundtag import evaluation
from soundtag.errors import DataError, ParameterError
from soundtag.features import extract_features
from soundtag.manifest import Manifest, read_manifest
from soundtag.models import create_model, load_weights
from soundtag.recipe import load_recipe
from soundtag.training import train
from soundtag.training.evaluate import _histories
from soundtag.training.splits import label_matrix


@pytest.fixture(scope="module")
def tiny_csv(esc10_root, tmp_path_factory, write_subset_csv) -> Path:
    """2 classes x 4 clips x 2 folds of real ESC-10 clips (fold 0 trains on 8, validates on 8)."""
    return write_subset_csv(esc10_root, tmp_path_factory.mktemp("tiny") / "tiny.csv", classes=2, per_class_per_fold=4)


@pytest.fixture(scope="module")
def tiny(tiny_csv) -> Manifest:
    return read_manifest(tiny_csv)


def _train_fold0(manifest: Manifest, overrides: list[str], out: Path, cache: Path):
    recipe = load_recipe("esc50-lh", overrides)
    result = train(manifest, recipe, out, cache_dir=cache, folds=[0], progress=False)
    assert result.folds_trained == [0]
    return result.run_dir, json.loads((result.run_dir / "fold-0" / "done.json").read_text())


# --- optimiser and schedule, through TaggerModule.configure_optimizers -------------------------


def _one_cycle(step: int, total: int, max_lr: float) -> float:
    """torch's OneCycleLR with its defaults (pct_start 0.3, cosine, div 25, final div 1e4),
    written out from its documentation rather than taken from torch."""
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    up_end, down_end = 0.3 * total - 1, total - 1

    def cos(start, end, pct):
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    if step <= up_end:
        return cos(initial, max_lr, step / up_end)
    return cos(max_lr, final, (step - up_end) / (down_end - up_end))


@pytest.mark.slow
@pytest.mark.parametrize(
    "optimizer,scheduler", [("adamw", "onecycle"), ("adam", "none"), ("adam", "cosine"), ("adamw", "warmup_cosine")]
)
def test_optimiser_and_learning_rate_trajectory(tiny, feature_cache, fast, tmp_path, optimizer, scheduler):
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    from soundtag.training.folds import FoldSet
    from soundtag.training.module import TaggerModule

    lr, epochs = 0.004, 2
    recipe = load_recipe(
        "esc50-lh",
        fast
        + [
            f"training.optimizer={optimizer}",
            f"training.scheduler={scheduler}",
            f"training.lr={lr}",
            "training.weight_decay=0.01",
            f"training.epochs={epochs}",
            "training.batch_size=2",
            "training.warmup_epochs=1",
        ],
    )
    store, _ = extract_features(tiny, recipe, cache_dir=feature_cache, workers=0, progress=False)
    data = FoldSet.build(tiny, recipe, store).loaders(0)
    steps_per_epoch = len(data.train)
    assert steps_per_epoch == 4  # 8 training clips, 4 per class (already balanced), batches of 2
    module = TaggerModule(recipe.model_dump(), list(tiny.labels), tiny.multilabel, data.normalizer.to_dict())
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data.train, data.val)

    (opt,) = trainer.optimizers
    assert type(opt) is {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[optimizer]
    assert opt.param_groups[0]["weight_decay"] == 0.01
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(f"lr-{type(opt).__name__}")]
    logged = [float(r[f"lr-{type(opt).__name__}"]) for r in sorted(rows, key=lambda r: int(r["step"]))]
    total = epochs * steps_per_epoch
    assert len(logged) == total, logged
    if scheduler == "onecycle":
        expected = [_one_cycle(s, total, lr) for s in range(total)]
        assert logged[0] == pytest.approx(lr / 25)
        assert 0 < int(np.argmax(logged)) < total - 1  # up, then down
    elif scheduler == "warmup_cosine":  # one epoch (4 steps) up to lr, then a cosine to 0 per step
        expected = [lr * (s + 1) / 4 if s < 4 else lr * (1 + math.cos(math.pi * (s - 4) / 4)) / 2 for s in range(total)]
    elif scheduler == "cosine":  # stepped per epoch over `epochs`
        expected = [lr * (1 + math.cos(math.pi * (s // steps_per_epoch) / epochs)) / 2 for s in range(total)]
    else:
        expected = [lr] * total
    assert logged == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_a_run_with_adamw_and_onecycle_saves_their_state(tiny, feature_cache, fast, tmp_path):
    run, done = _train_fold0(
        tiny,
        fast
        + [
            "training.optimizer=adamw",
            "training.scheduler=onecycle",
            "training.lr=0.003",
            "training.weight_decay=0.05",
            "training.batch_size=4",
        ],
        tmp_path / "run",
        feature_cache,
    )
    last = torch.load(run / "fold-0" / "last.ckpt", map_location="cpu", weights_only=True)
    (opt_state,) = last["optimizer_states"]
    assert opt_state["param_groups"][0]["weight_decay"] == 0.05
    (sched,) = last["lr_schedulers"]
    steps = done["epochs"] * 2  # 8 training clips in batches of 4
    assert sched["total_steps"] == steps and sched["last_epoch"] == steps
    assert sched["_last_lr"][0] == pytest.approx(_one_cycle(steps, steps, 0.003), rel=1e-6)  # after the last step


# --- early stopping and the monitor -------------------------------------------------------------


def _swap_labels_of_fold(csv_path: Path, fold: str, out: Path) -> Path:
    """The CSV with the two labels swapped in ``fold``: learning the other fold makes its loss worse."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted({r["labels"] for r in rows})
    assert len(labels) == 2
    for r in rows:
        if r["fold"] == fold:
            r["labels"] = labels[1 - labels.index(r["labels"])]
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.mark.slow
def test_early_stopping_stops_when_the_monitor_stops_improving(tiny_csv, feature_cache, fast, tmp_path):
    swapped = read_manifest(_swap_labels_of_fold(tiny_csv, "1", tmp_path / "swapped.csv"))
    patience, max_epochs = 2, 15
    run, done = _train_fold0(
        swapped,
        fast
        + [
            f"training.epochs={max_epochs}",
            f"training.early_stopping={patience}",
            "training.lr=0.01",
            "training.scheduler=none",
            "training.batch_size=4",
        ],
        tmp_path / "run",
        feature_cache,
    )
    losses = _histories(run)["fold-0"]["val_loss"].tolist()
    assert done["epochs"] == len(losses) < max_epochs, losses
    best = int(np.argmin(losses))
    # stopped `patience` epochs after the best one, and never before: every earlier stretch of
    # `patience` epochs held a new best
    assert len(losses) == best + patience + 1, losses
    for e in range(patience, best + 1):
        assert min(losses[e - patience + 1 : e + 1]) < min(losses[: e - patience + 1]), (e, losses)
    assert done["best_score"] == pytest.approx(losses[best], rel=1e-5)


@pytest.mark.slow
def test_the_best_checkpoint_is_chosen_by_val_map3(tiny, feature_cache, fast, tmp_path):
    # The choice shows which metric was monitored only in a run where MAP@3 peaks at another epoch
    # than the loss's lowest: the first seed that gives one is used.
    for seed in range(8):
        run, done = _train_fold0(
            tiny,
            fast
            + [
                "training.monitor=val_map3",
                "training.epochs=4",
                "training.lr=0.01",
                "training.batch_size=4",
                f"training.seed={seed}",
            ],
            tmp_path / f"run-{seed}",
            feature_cache,
        )
        history = _histories(run)["fold-0"]
        map3 = history["val_map3"].tolist()
        best_epoch = int(np.argmax(map3))  # the first of the highest (a tie is no improvement)
        if best_epoch != int(np.argmin(history["val_loss"])):
            break
    else:
        pytest.fail("in 8 seeds MAP@3 always peaked where the loss was lowest")
    assert done["best_score"] == pytest.approx(map3[best_epoch], abs=1e-6)
    best = torch.load(run / "fold-0" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == best_epoch
    # two checkpoint callbacks: the best by the monitor, and the latest epoch (for resume)
    (state,) = [v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint") and v["monitor"]]
    assert state["monitor"] == "val_map3" and float(state["best_model_score"]) == pytest.approx(
        map3[best_epoch], abs=1e-6
    )
    # the out-of-fold predictions are the best checkpoint's: their MAP@3 is the best score
    row = {c.id: i for i, c in enumerate(tiny)}
    targets = label_matrix(tiny)[[row[c] for c in done["clips"]]]
    assert evaluation.map_at_k(targets, np.load(run / "fold-0" / "oof.npy"), 3) == pytest.approx(
        map3[best_epoch], abs=1e-5
    )


# --- relabelling a multi-label manifest ---------------------------------------------------------


@pytest.mark.slow
def test_multilabel_relabel_gives_clips_several_labels(tiny_csv, feature_cache, fast, tmp_path):
    with open(tiny_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    a, b = sorted({r["labels"] for r in rows})
    for i, r in enumerate(rows):  # every fourth clip carries both labels: a multi-label manifest
        if i % 4 == 0:
            r["labels"] = f"{a},{b}"
    ml_csv = tmp_path / "multilabel.csv"
    with open(ml_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "labels", "fold"])
        w.writeheader()
        w.writerows(rows)
    data = read_manifest(ml_csv)
    assert data.multilabel
    single = [c for c in data if len(c.labels) == 1]
    double = [c for c in data if len(c.labels) == 2]
    to_both, to_one = single[0], double[0]
    other = b if to_one.labels[0] == a else a
    relabel = tmp_path / "relabel.csv"
    with open(relabel, "w", newline="") as fh:
        w = csv.writer(fh)  # "a,b" is quoted: one cell holding two labels
        w.writerow(["clip_id", "label"])
        w.writerow([to_both.id, f"{b},{a}"])
        w.writerow([to_one.id, other])
    assert f'"{b},{a}"' in relabel.read_text()

    run, _ = _train_fold0(
        data,
        fast + [f"training.relabel={relabel}", "training.epochs=1", "training.batch_size=4"],
        tmp_path / "run",
        feature_cache,
    )
    trained = Manifest.from_jsonl(run / "manifest.jsonl")
    assert trained.multilabel
    by_id = {c.id: c for c in trained}
    assert set(by_id[to_both.id].labels) == {a, b}
    assert by_id[to_one.id].labels == (other,)
    assert all(by_id[c.id].labels == c.labels for c in data if c.id not in (to_both.id, to_one.id))
    # the targets the fold was scored against are the relabelled ones
    assert label_matrix(trained)[trained.ids.index(to_both.id)].tolist() == [1, 1]
    probs = np.load(run / "fold-0" / "oof.npy")
    assert np.all((probs >= 0) & (probs <= 1)) and not np.allclose(probs.sum(1), 1)  # sigmoid outputs

    bad = tmp_path / "bad.csv"
    bad.write_text(f'clip_id,label\n{to_both.id},"{a},Not a label"\n')
    with pytest.raises(DataError, match="Not a label"):
        train(
            data,
            load_recipe("esc50-lh", fast + [f"training.relabel={bad}"]),
            tmp_path / "bad-run",
            cache_dir=feature_cache,
            progress=False,
        )


# --- a checkpoint into a classifier of another size -----------------------------------------------


@pytest.mark.slow
def test_weights_load_into_a_classifier_of_another_size(tiny, feature_cache, fast, tmp_path):
    run, _ = _train_fold0(tiny, fast + ["training.epochs=1", "training.batch_size=4"], tmp_path / "run", feature_cache)
    ckpt = run / "fold-0" / "best.ckpt"
    trained = {
        k.removeprefix("model."): v
        for k, v in torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].items()
    }
    assert trained["classifier.weight"].shape[0] == 2

    widths = {"widths": [8, 16]}
    torch.manual_seed(7)
    fresh = create_model("vgg", num_classes=5, **widths)
    torch.manual_seed(7)  # same draws: the head it leaves alone is the fresh model's head
    loaded = create_model("vgg", num_classes=5, checkpoint=ckpt, **widths)
    own = loaded.state_dict()
    head = {k for k in own if k.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    for k, v in own.items():
        if k in head:
            assert torch.equal(v, fresh.state_dict()[k]), k
        else:
            assert torch.equal(v, trained[k]), k
    assert not torch.equal(own["features.0.weight"], fresh.state_dict()["features.0.weight"])
    assert loaded(torch.randn(2, 1, 32, 100)).shape == (2, 5)

    # load_weights on an existing model does the same; a checkpoint of another net is refused
    other = create_model("vgg", num_classes=3, **widths)
    load_weights(other, ckpt)
    assert torch.equal(other.state_dict()["features.3.weight"], trained["features.3.weight"])
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ParameterError, match="does not fit"):
        load_weights(create_model("vgg", num_classes=2, **widths), tmp_path / "linear.pt")

    # and through the recipe (training.checkpoint): a 3-class run starts from the 2-class run's
    # backbone, with a fresh 3-class head
    from soundtag.training.module import TaggerModule

    recipe = load_recipe("esc50-lh", fast + [f"training.checkpoint={ckpt}"])
    torch.manual_seed(3)
    module = TaggerModule(
        recipe.model_dump(), ["x", "y", "z"], False, {"kind": "per_sample", "mean": None, "std": None}
    )
    torch.manual_seed(3)
    scratch = TaggerModule(
        load_recipe("esc50-lh", fast).model_dump(),
        ["x", "y", "z"],
        False,
        {"kind": "per_sample", "mean": None, "std": None},
    )
    started = module.model.state_dict()
    assert started["classifier.weight"].shape[0] == 3
    assert torch.equal(started["classifier.weight"], scratch.model.state_dict()["classifier.weight"])
    assert all(torch.equal(started[k], trained[k]) for k in started if not k.startswith("classifier."))


def test_a_checkpoint_of_another_net_is_refused(tmp_path):
    torch.save(create_model("alexnet-kernel", num_classes=2).state_dict(), tmp_path / "alexnet.pt")
    with pytest.raises(ParameterError, match="does not fit"):
        load_weights(create_model("vgg", num_classes=2, widths=[8, 16]), tmp_path / "alexnet.pt")


# --- EMA of the weights, and the weights a fold keeps -----------------------------------------


def test_ema_averages_the_trained_weights_into_the_model_that_predicts():
    from soundtag.training.module import TaggerModule

    recipe = load_recipe(
        "esc50-lh",
        [
            "training.model=vgg",
            "training.model_args={widths: [4, 8]}",
            "training.ema.enabled=true",
            "training.ema.decay=0.5",
        ],
    )
    module = TaggerModule(recipe.model_dump(), ["a", "b"], False, {"kind": "per_sample", "mean": None, "std": None})
    assert module.net is module.training_model and module.net is not module.model
    assert not any(p.requires_grad for p in module.model.parameters())
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    with torch.no_grad():
        for p in module.training_model.parameters():
            p.add_(1.0)
    module._update_ema()  # global step 0: the warm-up decay min(0.5, 1/10) = 0.1
    for name, value in module.model.state_dict().items():
        live = module.training_model.state_dict()[name]
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.1 * before[name] + 0.9 * live)
        else:
            assert torch.equal(value, live)
    state = module.state_dict()
    assert any(k.startswith("model.") for k in state) and any(k.startswith("training_model.") for k in state)
    module.train()
    x = torch.randn(2, 1, 32, 40)
    outputs = []
    for net in (module, module.training_model):
        torch.manual_seed(0)  # the same dropout masks
        outputs.append(net(x))
    assert torch.equal(*outputs), "training steps the trained weights"
    module.eval()
    assert torch.equal(module(x), module.model(x)), "validation and prediction use the averaged weights"


@pytest.mark.slow
def test_a_run_with_ema_and_keep_last_predicts_with_the_last_averaged_weights(tiny, feature_cache, fast, tmp_path):
    from soundtag.inference.fold_models import load_run
    from soundtag.runs import RunDir

    run, done = _train_fold0(
        tiny,
        fast
        + [
            "training.ema.enabled=true",
            "training.ema.decay=0.9",
            "training.keep=last",
            "training.epochs=3",
            "training.augment.freq_shift.enabled=true",
        ],
        tmp_path / "run",
        feature_cache,
    )
    assert done["best_checkpoint"] == "last.ckpt" and done["epochs"] == 3
    state = torch.load(run / "fold-0" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    averaged = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    trained = {k.removeprefix("training_model."): v for k, v in state.items() if k.startswith("training_model.")}
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())
    # the out-of-fold predictions are those of the averaged weights (what the tagger loads as `model.*`)
    from soundtag.features.store import FeatureStore
    from soundtag.inference.clips import predict_loader
    from soundtag.training.folds import FoldSet
    from soundtag.training.module import TaggerModule

    recipe = RunDir(run).recipe()
    loaders = FoldSet.build(tiny, recipe, FeatureStore.open(feature_cache, recipe)).loaders(0)
    module = TaggerModule.from_checkpoint(run / "fold-0" / "last.ckpt")
    oof = RunDir(run).out_of_fold(partial=True)
    order = [list(oof.manifest.ids).index(c) for c in loaders.oof_ids]
    np.testing.assert_allclose(predict_loader(module, loaders.oof, torch.device("cpu")), oof.probs[order], atol=1e-6)
    module.model.load_state_dict(module.training_model.state_dict())
    assert not np.allclose(predict_loader(module, loaders.oof, torch.device("cpu")), oof.probs[order], atol=1e-6)
    assert load_run(run).checkpoints == [run / "fold-0" / "last.ckpt"]
