"""Pictures: drawn with matplotlib's object API, leaving no process-wide state behind.

Each check runs in a fresh interpreter, so that nothing another test imported (pyplot, a
backend choice) can hide a side effect of the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLIP = "001 - Dog bark/1-100032-A.ogg"

SCRIPT = r"""
import json, sys
import matplotlib
import numpy as np
import pandas as pd
from soundtag import evaluation
from soundtag.plots import show_clip
from soundtag.recipe import load_recipe

backend = matplotlib.rcParams._get_backend_or_none()
clip, out = sys.argv[1], sys.argv[2]
show_clip(clip, [load_recipe("esc50-lh"), load_recipe("esc50-x")], out + "/clip.png")
targets = np.eye(3)[[0, 1, 2, 1]]
probs = np.eye(3)[[0, 1, 1, 1]] * 0.9 + 0.1 / 3
evaluation.plot_confusion(targets, probs, ["a", "b", "c"], out + "/confusion.png")
curves = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.85],
                       "val_map3": [0.5, 0.6, 0.7]})
evaluation.plot_learning_curves({"fold1": curves}, out + "/curves.png")
print(json.dumps({"pyplot": "matplotlib.pyplot" in sys.modules,
                  "backend_before": backend,
                  "backend_after": matplotlib.rcParams._get_backend_or_none()}))
"""


@pytest.mark.slow
def test_plots_write_pngs_without_pyplot_or_a_backend_switch(esc10_root, tmp_path):
    clip = esc10_root / "audio" / CLIP
    assert clip.is_file(), f"test data missing: {clip}"
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(clip), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout.strip().splitlines()[-1])
    assert state == {
        "pyplot": False,
        "backend_before": state["backend_before"],
        "backend_after": state["backend_before"],
    }
    for name in ("clip.png", "confusion.png", "curves.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_subplots_are_on_a_private_agg_canvas():
    from soundtag.plots import subplots

    fig, axes = subplots(2, 1, figsize=(3, 2), gridspec_kw={"height_ratios": [1, 2]})
    assert type(fig.canvas).__name__ == "FigureCanvasAgg" and len(axes) == 2
    fig, ax = subplots()
    assert not hasattr(ax, "__len__")
    if "matplotlib.pyplot" in sys.modules:  # another test imported it: the figure is not in its registry
        import matplotlib.pyplot as plt

        assert fig not in [plt.figure(n) for n in plt.get_fignums()]
    with pytest.raises(AttributeError, match="not_an_option"):
        subplots(figsize=(3, 2), not_an_option=1)
