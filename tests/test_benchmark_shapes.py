"""The data-shape benchmark's bookkeeping: a variant of the default (``--set``) is kept as rows of
its own, next to the row it varies, and compared with the case's baseline like any row."""

from __future__ import annotations


def _row(top1: float, wall_s: float, **extra) -> dict:
    return {
        "top1": top1,
        "map3": top1,
        "wall_s": wall_s,
        "views": "LH",
        "front_end": "16 kHz, 64 mels",
        "epochs": 41,
        "code": "abc1234",
        "args": "soundtag train --data D",
        "date": "2026-12-08",
    } | extra


def test_a_variant_is_named_by_its_overrides_and_the_baseline_takes_none(benchmark_module):
    variant_name = benchmark_module("shapes").variant_name
    assert variant_name("default", []) == "default"
    assert variant_name("default", ["training.batch_size=16"]) == "default with training.batch_size=16"
    assert variant_name("default at the baseline's time", ["a.b=1", "c.d=2"]) == (
        "default at the baseline's time with a.b=1, c.d=2"
    )


def test_a_variant_row_follows_the_row_it_varies_with_its_own_delta_and_time_ratio(benchmark_module):
    shapes = benchmark_module("shapes")
    report = {
        "machine": "m",
        "rows": {
            "esc10|default at the baseline's time with x.y=1": _row(0.90, 330.0, baseline_wall_s=300.0),
            "esc10|default": _row(0.88, 240.0, baseline_wall_s=300.0),
            "esc10|baseline": _row(0.87, 300.0),
            "esc10|default at the baseline's time": _row(0.89, 310.0, baseline_wall_s=300.0),
        },
    }
    lines = [line for line in shapes.table(report) if line.startswith("| esc10 |")]
    assert [line.split(" | ")[1] for line in lines] == [
        "baseline",
        "default",
        "default at the baseline's time",
        "default at the baseline's time with x.y=1",
    ]
    variant = lines[-1].split(" | ")
    assert variant[6] == "+3.0 pts" and variant[9] == "1.10x"
