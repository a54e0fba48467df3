"""A time budget turned into epochs: what ``soundtag train --time 30m`` plans before it trains.

Before training, a few real steps of each view's model are timed on this machine
(:func:`soundtag.training.timing.time_fold`); :func:`plan_epochs` then gives every view the same
number of epochs, the most that let the whole command (features, every fold of every view,
out-of-fold predictions, the blend) end within the budget, or gives LH the whole budget where two
views would each train too little (:data:`MIN_EPOCHS_PER_VIEW`). The budget is a measurement, not a
constant, because the same model trains 2x faster or slower from one machine to the next. While
training, each view's first fold times its own epochs and re-plans the epochs of every fold from
them (:class:`Pace`), since a few timed steps can be off by a third.

Examples
--------
>>> parse_duration("1h30m"), parse_duration("45s"), parse_duration("20")
(5400.0, 45.0, 1200.0)
>>> lh = FoldTiming(0.5, 0.2, 2.0, 3.0, train_batches=50, val_batches=13, oof_batches=13)
>>> lh.epoch_s, lh.fixed_s
(29.6, 5.6)
>>> plan = plan_epochs({"lh": lh}, folds=1, budget_s=600, spent_s=60)
>>> plan.epochs, round(plan.expected_s)
(17, 574)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

from soundtag.errors import ParameterError

__all__ = [
    "DEFAULT_BUDGET",
    "FoldTiming",
    "Pace",
    "TimePlan",
    "default_budget_epochs",
    "default_budget_s",
    "format_minutes",
    "later_views_left_out",
    "parse_duration",
    "plan_epochs",
    "replan_epochs",
]

#: The default budget: ``factor`` times the time ``epochs`` epochs of the LH view over every fold
#: take on the machine, features included, timed. On a CPU that is the plain-CNN baseline's
#: schedule (30 epochs); on a GPU the longest schedule ``auto`` gave a GPU before budgets were
#: timed (150 epochs; not yet measured on a GPU).
DEFAULT_BUDGET = {"factor": 1.4, "epochs": {"cpu": 30, "gpu": 150}}
EPOCH_LIMITS = (5, 300)
#: Two views are trained only when the budget gives each at least this many epochs; below it, LH
#: takes the whole budget alone. Measured with the default's recipes on 2 CPU cores, one seed a
#: row, against LH alone trained for the same time: at 21-25 epochs a view the blend scored 75.0%
#: against 82.0% on ESC-50 fold 1, 64.8% against 70.8% on clips cut to 1 s, and 89.4% against 89.4%
#: on a 20-class, 40-clip subset; at 62 a view (X re-planned to 45) it was level on fold 1 (85.0%
#: against 85.25%). The data-shape benchmark's `default, LH + X` rows agree (74.50% on fold 1, 68.50%
#: on 1 s clips, level on the subset over three seeds). Given 30 minutes (150-240 epochs a view) the
#: blend gained 2.0 points over its better view on ESC-10 and none in top-1 on ESC-50 fold 1.
MIN_EPOCHS_PER_VIEW = 60
#: Seconds kept for what follows the folds: scoring the run, its plots, blending the views and the
#: interpreter's exit. Timed by hand from one run's printed lines, one view of the 20-class subset on
#: 2 CPU cores: 1.7 s scoring and plots, 1.5 s exit.
RESERVE_S = 5.0


@dataclass(frozen=True)
class FoldTiming:
    """One fold of one view, timed on this machine.

    Attributes
    ----------
    train_step_s : seconds of one training batch (forward, loss, backward, optimiser step, its data)
    val_batch_s : seconds of one validation batch
    epoch_overhead_s : what an epoch costs beyond its batches (checkpoints, logs, loader start)
    fold_setup_s : what a fold costs before its first epoch (normaliser, loaders, trainer)
    train_batches, val_batches, oof_batches : batches of one epoch, of validation, of the fold's
        out-of-fold prediction
    tta : shifted copies the out-of-fold prediction adds to each chunk
    probe_s : seconds the measurement itself took
    """

    train_step_s: float
    val_batch_s: float
    epoch_overhead_s: float
    fold_setup_s: float
    train_batches: int
    val_batches: int
    oof_batches: int
    tta: int = 0
    probe_s: float = 0.0

    @property
    def epoch_s(self) -> float:
        """Seconds of one epoch: its training batches, its validation and its overhead."""
        return round(
            self.train_batches * self.train_step_s + self.val_batches * self.val_batch_s + self.epoch_overhead_s, 6
        )

    @property
    def fixed_s(self) -> float:
        """Seconds of a fold beyond its epochs: set-up and the out-of-fold prediction."""
        return round(self.fold_setup_s + self.oof_batches * self.val_batch_s * (1 + self.tta), 6)

    def fold_s(self, epochs: int) -> float:
        return epochs * self.epoch_s + self.fixed_s

    def scaled(self, factor: float) -> "FoldTiming":
        """This timing with its batches and epoch overhead ``factor`` times as long: what a fold
        costs once its real epochs have shown the timed steps to be off by that factor.

        >>> FoldTiming(0.5, 0.2, 2.0, 3.0, 50, 13, 13).scaled(1.1).epoch_s
        32.56
        """
        return replace(
            self,
            train_step_s=self.train_step_s * factor,
            val_batch_s=self.val_batch_s * factor,
            epoch_overhead_s=self.epoch_overhead_s * factor,
        )


@dataclass
class TimePlan:
    """Epochs for every view and the time they are expected to take.

    Attributes
    ----------
    budget_s : the whole command's budget, seconds (None: the epochs were given, not planned)
    budget_source : where the budget came from, in words
    epochs : epochs of every view
    views : the views trained, in order
    folds : folds each view trains
    spent_s : seconds spent before training (features, timing)
    expected_s : seconds the whole command is expected to take (None: not timed)
    view_expected_s : expected seconds of each view's folds
    timings : each view's :class:`FoldTiming`, as a dict
    notes : what the plan changed and why (a view dropped, epochs held at a limit)
    view_epochs : the epochs each view trains: ``epochs``, unless a later view was planned again
        once the views before it had finished (:func:`replan_epochs`)
    actual_s : seconds the command took, once it is done (summed over resumed sessions)
    budget_epochs : with the default budget, the epochs of the first view it counts (its factor x
        the folds x the baseline's epochs), so that the budget follows that view's real epoch
        time once its first fold has shown it (:class:`Pace`); 0 for a budget given (``--time``)
    """

    budget_s: float | None
    budget_source: str
    epochs: int
    views: list[str]
    folds: int
    spent_s: float
    expected_s: float | None
    view_expected_s: dict[str, float]
    timings: dict[str, dict]
    notes: list[str] = field(default_factory=list)
    actual_s: float | None = None
    view_epochs: dict[str, int] = field(default_factory=dict)
    budget_epochs: float = 0.0

    def __post_init__(self):
        self.view_epochs = dict(self.view_epochs) or {v: self.epochs for v in self.views}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TimePlan":
        return cls(**data)

    def epochs_text(self) -> str:
        """``'28 epochs for each of LH + X'``, or each view's own once a later view was planned again.

        >>> plan = TimePlan(budget_s=600, budget_source="", epochs=28, views=["lh", "x"], folds=1,
        ...                 spent_s=20, expected_s=590, view_expected_s={}, timings={})
        >>> plan.epochs_text()
        '28 epochs for each of LH + X'
        >>> plan.view_epochs["x"] = 21
        >>> plan.epochs_text()
        'LH 28 epochs, X 21 epochs'
        """
        if len(self.views) == 1:
            return f"{self.epochs} epochs of {self.views[0].upper()}"
        if len(set(self.view_epochs.values())) <= 1:
            return f"{self.epochs} epochs for each of {' + '.join(v.upper() for v in self.views)}"
        return ", ".join(f"{v.upper()} {self.view_epochs[v]} epochs" for v in self.views)

    def lines(self) -> list[str]:
        """The plan as printed before training."""
        names = " + ".join(v.upper() for v in self.views)
        epochs = f"{self.epochs} epochs " + ("of " if len(self.views) == 1 else "for each of ") + names
        if self.expected_s is None:
            return [f"plan: {epochs}: {self.budget_source}"]
        per_view = ", ".join(f"{v.upper()} {format_minutes(s)}" for v, s in self.view_expected_s.items())
        head = (
            f"plan: {epochs}, {self.folds} fold(s){' each' if len(self.views) > 1 else ''}; "
            f"expected {format_minutes(self.expected_s)} in all "
            f"({format_minutes(self.spent_s)} spent on features and timing, then {per_view}"
            + (", then the blend)" if len(self.views) > 1 else ")")
        )
        budget = (
            f"budget {format_minutes(self.budget_s)}: {self.budget_source}"
            if self.budget_s is not None
            else f"no budget: {self.budget_source}"
        )
        steps = "; ".join(
            f"{v.upper()}: {t['train_step_s'] * 1000:.0f} ms a training batch, "
            f"{FoldTiming(**t).epoch_s:.1f} s an epoch of {t['train_batches']} batches"
            for v, t in self.timings.items()
        )
        return [head, budget, f"timed on this machine: {steps}", *self.notes]


def format_minutes(seconds: float) -> str:
    """``'12.3 min'``; ``'45 s'`` under a minute.

    >>> format_minutes(738), format_minutes(45.2)
    ('12.3 min', '45 s')
    """
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``30m``, ``1h30m``, ``90s`` or ``45`` (minutes).

    Raises
    ------
    ParameterError
        for anything else, or a duration that is not positive
    """
    value = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(value) * 60
    except ValueError:
        match = _DURATION.match(value)
        if not value or not match or not any(match.groupdict().values()):
            raise ParameterError(
                f"--time {text!r} is not a duration: write it like 30m, 1h30m, 90s or 45 (minutes)"
            ) from None
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        seconds = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    if not seconds > 0 or math.isinf(seconds):
        raise ParameterError(f"--time {text!r} must be a positive duration")
    return seconds


def replan_epochs(
    timings: dict[str, FoldTiming], *, folds: int, left_s: float, limits: tuple[int, int] = EPOCH_LIMITS
) -> int:
    """The epochs the views still to train get from the ``left_s`` seconds that remain, once the
    views before them have finished: what corrects the plan for the time those really took.

    >>> replan_epochs({"x": FoldTiming(0.2, 0.2, 1.0, 2.0, 50, 13, 13)}, folds=1, left_s=300)
    21
    """
    raw = _epochs_that_fit(list(timings.values()), folds=folds, budget_s=left_s, spent_s=0.0)
    return int(min(max(math.floor(raw), limits[0]), limits[1]))


@dataclass(frozen=True)
class Pace:
    """The budget one view trains in, kept while it trains: the real epochs of its first fold set
    the epochs of every fold of the view, where the steps timed before training were off.

    Steps timed before training can be off by a third on 2 CPU cores: on the 20-class subset, the
    data-shape benchmark's six runs of LH alone timed 93-121 ms a step and ended their 2-minute
    budgets 5-32% early (worked out by hand from their own ``plan.json``). The fold's own epochs, timed as it trains,
    correct that before most of the schedule has run.

    Attributes
    ----------
    deadline : ``time.perf_counter()`` at which the budget ends
    timing : this view's :class:`FoldTiming`, from the steps timed before training
    later : the timings of the views trained after this one (planned the same epochs)
    folds : folds each view trains
    epochs : the epochs planned
    budget_epochs : the epochs of this view the budget counts (:attr:`TimePlan.budget_epochs`): the
        default budget, timed from the same steps, moves with the real epochs too
    limits : the fewest and the most epochs
    """

    deadline: float
    timing: FoldTiming
    later: tuple[FoldTiming, ...]
    folds: int
    epochs: int
    budget_epochs: float = 0.0
    limits: tuple[int, int] = EPOCH_LIMITS

    def budget_change_s(self, real_epoch_s: float) -> float:
        """Seconds the budget moves by when this view's epochs take ``real_epoch_s``: none for a
        budget given, ``budget_epochs`` x the error of the timed epoch for the default.

        >>> lh = FoldTiming(0.5, 0.2, 2.0, 3.0, 50, 13, 13)
        >>> Pace(600.0, lh, (), 1, 17, budget_epochs=42).budget_change_s(lh.epoch_s + 1)
        42.0
        """
        return self.budget_epochs * (real_epoch_s - self.timing.epoch_s)

    def checks(self) -> tuple[int, ...]:
        """The epochs done at which the first fold's pace is read: after its third epoch (the
        first, which warms up, is not counted), then a quarter and half of the way, as the
        machine's speed drifts within a fold. Each re-plan stretches
        or shortens the learning-rate schedule from where it is, a few percent once the first
        has corrected the timed steps.

        >>> lh = FoldTiming(0.5, 0.2, 2.0, 3.0, 50, 13, 13)
        >>> Pace(0.0, lh, (), 1, epochs=41).checks(), Pace(0.0, lh, (), 1, epochs=8).checks()
        ((3, 10, 20), (3, 4))
        """
        return tuple(sorted({e for e in (3, round(self.epochs / 4), round(self.epochs / 2)) if 3 <= e < self.epochs}))

    def replanned(self, *, epochs_done: int, real_epoch_s: float, now: float) -> int:
        """The epochs every fold of the view gets once its first fold has trained ``epochs_done``
        epochs at ``real_epoch_s`` each: the most that end the command by the deadline, with the
        views after it off from their timed steps by the same factor as this one; never fewer
        than ``epochs_done + 1``, and within ``limits``. The deadline moves with the default
        budget (:meth:`budget_change_s`).

        >>> lh = FoldTiming(0.5, 0.2, 2.0, 3.0, train_batches=50, val_batches=13, oof_batches=13)
        >>> pace = Pace(deadline=600.0, timing=lh, later=(), folds=1, epochs=17)
        >>> pace.replanned(epochs_done=3, real_epoch_s=lh.epoch_s, now=60 + 3.0 + 3 * lh.epoch_s)
        17
        >>> pace.replanned(epochs_done=3, real_epoch_s=1.2 * lh.epoch_s, now=60 + 3.0 + 3 * 1.2 * lh.epoch_s)
        14
        """
        factor = real_epoch_s / self.timing.epoch_s
        timings = [t.scaled(factor) for t in (self.timing, *self.later)]
        # The first fold's set-up and the epochs it has trained are counted in the folds' time
        # below, so they are added back to what is left.
        deadline = self.deadline + self.budget_change_s(real_epoch_s)
        left = deadline - now + self.timing.fold_setup_s + epochs_done * timings[0].epoch_s
        raw = _epochs_that_fit(timings, folds=self.folds, budget_s=left, spent_s=0.0)
        return int(min(max(math.floor(raw), epochs_done + 1, self.limits[0]), self.limits[1]))


def default_budget_epochs(folds: int, device: str = "cpu") -> float:
    """The LH epochs the default budget counts: :data:`DEFAULT_BUDGET` ``factor`` x the folds x
    its ``epochs`` for ``device``.

    >>> default_budget_epochs(5)
    210.0
    """
    return DEFAULT_BUDGET["factor"] * folds * DEFAULT_BUDGET["epochs"]["gpu" if device == "gpu" else "cpu"]


def default_budget_s(lh: FoldTiming, folds: int, spent_s: float, device: str = "cpu") -> float:
    """The default budget: :data:`DEFAULT_BUDGET` ``factor`` x (what was spent before training +
    its ``epochs`` for ``device`` of the LH view over every fold; on a CPU the plain-CNN
    baseline's schedule).

    >>> default_budget_s(FoldTiming(0.5, 0.2, 2.0, 3.0, 50, 13, 13), folds=1, spent_s=60)
    1335.04
    """
    factor = DEFAULT_BUDGET["factor"]
    return round(factor * (spent_s + folds * lh.fixed_s) + default_budget_epochs(folds, device) * lh.epoch_s, 6)


def _epochs_that_fit(timings: list[FoldTiming], *, folds: int, budget_s: float, spent_s: float) -> float:
    """Epochs (fractional) each of these views gets when they share what is left of ``budget_s``."""
    left = budget_s - spent_s - RESERVE_S - folds * sum(t.fixed_s for t in timings)
    return left / (folds * sum(t.epoch_s for t in timings))


def later_views_left_out(
    first: str,
    timing: FoldTiming,
    later: list[str],
    *,
    folds: int,
    budget_s: float,
    spent_s: float,
    min_epochs_per_view: int = MIN_EPOCHS_PER_VIEW,
) -> str | None:
    """Why the views after ``first`` are left out before their features are computed, or None.

    Once the first view is timed, a budget that gives it alone fewer than ``min_epochs_per_view``
    epochs cannot give two views that many each, whatever the later ones cost: they would be
    dropped by :func:`plan_epochs` anyway, so their features and timing are not paid for. The
    ``--time`` the note names counts each later view's epochs and features at the first view's cost
    (they are not timed), so it is an estimate.

    >>> lh = FoldTiming(0.5, 0.2, 2.0, 3.0, train_batches=50, val_batches=13, oof_batches=13)
    >>> later_views_left_out("lh", lh, ["x"], folds=1, budget_s=600, spent_s=60)[:58]
    'the budget fits 17 epochs of LH alone, under 60 a view for'
    >>> later_views_left_out("lh", lh, ["x"], folds=1, budget_s=6000, spent_s=60) is None
    True
    """
    alone = _epochs_that_fit([timing], folds=folds, budget_s=budget_s, spent_s=spent_s)
    if not later or alone >= min_epochs_per_view:
        return None
    views = [first, *later]
    both = " + ".join(v.upper() for v in views)
    needed = len(views) * (spent_s + folds * timing.fold_s(min_epochs_per_view)) + RESERVE_S
    return (
        f"the budget fits {max(0, math.floor(alone))} epochs of {first.upper()} alone, under {min_epochs_per_view} a "
        f"view for {both}: views trained that little blend to less than {first.upper()} alone given the whole "
        f"budget, so {first.upper()} takes it and {', '.join(v.upper() for v in later)}'s features are not computed "
        f"(about --time {math.ceil(needed / 60)}m trains {both}, counting "
        f"{', '.join(v.upper() for v in later)} at {first.upper()}'s cost)"
    )


def plan_epochs(
    timings: dict[str, FoldTiming],
    *,
    folds: int,
    budget_s: float | None,
    spent_s: float,
    epochs: int | None = None,
    budget_source: str = "",
    limits: tuple[int, int] = EPOCH_LIMITS,
    min_epochs_per_view: int = MIN_EPOCHS_PER_VIEW,
) -> TimePlan:
    """The epochs that fit ``budget_s`` for the views of ``timings``, the same for every view.

    Parameters
    ----------
    timings : each view's timing, in training order (LH first)
    folds : folds each view trains
    budget_s : seconds for the whole command; None with ``epochs``
    spent_s : seconds already spent (features, timing)
    epochs : the epochs, when given rather than planned (the plan then only says how long)
    limits : the fewest and the most epochs planned

    min_epochs_per_view : when two views would get fewer epochs each, the second (X) is dropped
        and the first (LH) takes the whole budget (default :data:`MIN_EPOCHS_PER_VIEW`; 0 keeps
        the views asked for)

    A budget too small for ``limits[0]`` epochs still trains them, and the plan says it will
    overrun.
    """
    if folds < 1:
        raise ParameterError(f"folds={folds} must be at least 1")
    if budget_s is None and epochs is None:
        raise ParameterError("give a budget or the epochs")
    views = list(timings)
    notes: list[str] = []

    def fitting(vs: list[str]) -> float:
        return _epochs_that_fit([timings[v] for v in vs], folds=folds, budget_s=budget_s, spent_s=spent_s)

    if epochs is None:
        raw = fitting(views)
        if len(views) > 1 and raw < min_epochs_per_view:
            both = " + ".join(v.upper() for v in views)
            needed = (
                spent_s
                + RESERVE_S
                + folds * sum(timings[v].fixed_s + min_epochs_per_view * timings[v].epoch_s for v in views)
            )
            notes.append(
                f"the budget fits {max(0, math.floor(raw))} epochs for each of {both}, under {min_epochs_per_view}: "
                f"views trained that little blend to less than {views[0].upper()} alone given the whole budget, so "
                f"{views[0].upper()} takes it (--time {math.ceil(needed / 60)}m or more trains {both})"
            )
            views = views[:1]
            raw = fitting(views)
        epochs = int(min(max(math.floor(raw), limits[0]), limits[1]))
        if raw < limits[0]:
            notes.append(
                f"the budget fits under {limits[0]} epochs; {limits[0]} are trained anyway, so the run will overrun it"
            )
        elif raw > limits[1]:
            notes.append(f"the budget fits more than {limits[1]} epochs; {limits[1]} are trained, so it ends early")
    view_expected = {v: folds * timings[v].fold_s(epochs) for v in views}
    expected = spent_s + sum(view_expected.values()) + RESERVE_S
    return TimePlan(
        budget_s=budget_s,
        budget_source=budget_source,
        epochs=epochs,
        views=views,
        folds=folds,
        spent_s=spent_s,
        expected_s=round(expected, 3),
        view_expected_s={v: round(s, 3) for v, s in view_expected.items()},
        timings={v: asdict(timings[v]) for v in views},
        notes=notes,
    )
