"""A stopped job says so: 128 + the signal, one line with what was kept and how to resume.

Training and self-verification are stopped mid-run in their own modules' kill tests (under
SIGKILL and SIGTERM); here the mechanism itself, and feature extraction stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soundtag.stopping import Stopped, on_stop, stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_becomes_stopped_with_the_shells_exit_status(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Stopped) as stop:
        with stop_on_signals():
            with on_stop(lambda: "3 folds kept; resume with X"):
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler runs at the next bytecode: never reached
    assert stop.value.exit_status == 128 + signum
    assert stop.value.report() == f"stopped by {signal.Signals(signum).name}: 3 folds kept; resume with X"
    assert signal.getsignal(signum) is before, "the handler outlived its block"


def test_the_innermost_note_is_kept_and_a_failing_note_does_not_hide_the_stop():
    with pytest.raises(Stopped) as stop:
        with on_stop(lambda: "outer"), on_stop(lambda: "inner"):
            raise Stopped(signal.SIGTERM)
    assert stop.value.report() == "stopped by SIGTERM: inner"
    with pytest.raises(Stopped) as stop:
        with on_stop(lambda: 1 / 0):
            raise Stopped(signal.SIGTERM)
    assert stop.value.report().startswith("stopped by SIGTERM (what was kept could not be read")


def test_a_forked_worker_dies_of_the_signal_instead_of_unwinding_the_parents_code():
    with stop_on_signals():
        pid = os.fork()
        if pid == 0:  # the child: inherits the handler
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(0)  # reached only if the handler raised in the child
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def _cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and the processes it started (Linux /proc)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree = {pid}
    for _ in range(4):  # the command, its workers and theirs
        tree |= {p for p, (ppid, _) in stats.items() if ppid in tree}
    total = sum(stats[p][1] for p in tree if p in stats)
    return total / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_stopped_feature_extraction_exits_143_and_keeps_what_it_computed(esc10_root, tmp_path):
    cache = tmp_path / "cache"
    args = [
        sys.executable,
        "-m",
        "soundtag.cli",
        "features",
        "--data",
        str(esc10_root),
        "-r",
        "fsd2018-lh",
        "--cache",
        str(cache),
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while not list(cache.glob("*/store.json")):
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "the store was never opened"
        time.sleep(0.05)
    # a few batches in: the 400 clips take about 6 s of CPU to decode. Counted in CPU seconds of
    # the command's processes, not wall seconds: on a loaded machine a fixed sleep stopped it
    # before any clip was computed. 3 s, not 1.5: on a fresh clone, 1.5 s stopped it before any
    # clip was stored once (the cause not found; a cold start is the likeliest).
    start = _cpu_seconds(proc.pid)
    while _cpu_seconds(proc.pid) - start < 3.0:
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.time() < deadline, "the extraction never got going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    said = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 143, said[-2000:]
    assert "stopped by SIGTERM: the clips computed so far are kept in the feature store" in said
    assert "run the same command again to go on: soundtag features --data" in said
    store = next(cache.glob("*/store.json")).parent
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")], "a half-written file was left"
    kept = sum(len(json.loads(p.read_text())["clips"]) for p in (store / "parts").glob("*.json"))
    assert 0 < kept < 400, f"{kept} clips stored: the stop did not land mid-extraction"

    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    row = next(line for line in again.stdout.splitlines() if "fsd2018-lh" in line)
    clips, computed, cached = (int(x) for x in row.split("│")[2:5])
    assert (clips, computed, cached) == (400, 400 - kept, kept), row
