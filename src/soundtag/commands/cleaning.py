"""``soundtag suspects``, ``review`` and ``clean``: the blacklist loop; ``self-verify``: its
automatic counterpart for data with unverified labels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from soundtag.commands import console, rerun_note
from soundtag.stopping import Stopped, on_stop

ListsOpt = typer.Option(
    None,
    "--lists",
    help="folder of blacklist.csv, relabel.csv and decisions.csv "
    "(default: cleaning/<dataset name>/ in the current folder)",
)


def _lists_dir(run: Path, lists: Optional[Path]) -> Path:
    from soundtag.cleaning import default_lists_dir
    from soundtag.cleaning.suspects import check_run

    check_run(run)
    if lists is not None:
        return lists
    folder = default_lists_dir(run)
    console.print(f"lists: {folder} (choose another folder with --lists DIR)", soft_wrap=True)
    return folder


def suspects(
    run: Path = typer.Argument(..., help="a finished run directory"),
    lists: Optional[Path] = ListsOpt,
    top: Optional[int] = typer.Option(None, "--top", min=1, help="keep only the N most suspect clips"),
    audio: bool = typer.Option(True, help="also decode every clip to flag silent, clipped, duplicate and short ones"),
):
    """Rank a run's training clips by how suspect their label or audio is; write RUN/suspects.csv.

    Misclassified clips (out of fold), cleanlab's label issues and audio problems (near-silent,
    clipped, duplicate audio, much shorter than the class) are listed, most suspect first.

    Examples:

      soundtag suspects runs/esc10

      soundtag suspects runs/esc10 --top 100 --no-audio
    """
    from soundtag.cleaning import DecisionBook, find_suspects, summarize, write_suspects
    from soundtag.inference.blended import open_run
    from soundtag.reports import suspects_tables

    folder = _lists_dir(run, lists)
    df = find_suspects(run, audio=audio)
    if top is not None:
        df = df.head(top)
    path = write_suspects(df, open_run(run).suspects_csv)
    manifest = open_run(run).manifest()
    decided = DecisionBook(folder).latest() if folder.is_dir() else {}
    by_class, head = suspects_tables(run, df, summarize(df, manifest.labels, manifest.label_counts(), decided=decided))
    console.print(by_class)
    console.print(head)
    console.print(
        f"wrote {path}: {len(df)} suspects of {len(manifest)} clips; listen to them with `soundtag review {run}`",
        soft_wrap=True,
    )


def review(
    run: Path = typer.Argument(..., help="a finished run directory"),
    port: int = typer.Option(8765, "--port", help="port on 127.0.0.1 (0: any free port)"),
    lists: Optional[Path] = ListsOpt,
):
    """Review the suspects in a local web page: listen, then Blacklist, Keep or Relabel each.

    Every decision is written at once to the lists folder; stop with Ctrl-C and run the command
    again to go on where you stopped.

    Examples:

      soundtag review runs/esc10

      soundtag review runs/esc10 --port 8800 --lists cleaning/esc10
    """
    from soundtag.cleaning import retrain_command
    from soundtag.cleaning.review import HOST, check_port, create_app, serve
    from soundtag.inference.blended import open_run

    folder = _lists_dir(run, lists)
    port = check_port(port)
    if not open_run(run).suspects_csv.is_file():
        console.print("no suspects.csv yet: finding the suspects first (as `soundtag suspects` does)")
    web = create_app(run, folder)
    data = web.state.review
    console.print(
        f"review {run}, round {data.round}: {data.progress()['reviewed']} of {len(data.suspects)} reviewed; "
        f"decisions go to {folder}",
        soft_wrap=True,
    )
    console.print(f"open http://{HOST}:{port}/ in a browser (Ctrl-C to stop)", soft_wrap=True)
    try:
        serve(web, port=port)
    except Stopped:  # uvicorn stops gracefully, then raises the signal again: Ctrl-C is how a review ends
        again = f"soundtag review {run}" + (f" --lists {folder}" if lists else "")
        console.print(f"every decision is saved in {folder}; `{again}` goes on where you stopped", soft_wrap=True)
    console.print(f"then retrain: {retrain_command(run, folder)}", soft_wrap=True)


def clean(
    run: Path = typer.Argument(..., help="a finished run directory"),
    auto: bool = typer.Option(False, "--auto", help="apply cleanlab's findings without review"),
    max_fraction: float = typer.Option(0.05, "--max-fraction", help="decide at most this share of the clips"),
    relabel_above: Optional[float] = typer.Option(
        None,
        "--relabel-above",
        help="relabel to the top prediction when its probability is at least this, instead of blacklisting",
    ),
    lists: Optional[Path] = ListsOpt,
):
    """Blacklist the clips cleanlab flags, worst first, without listening (for those who trust it).

    Clips that already have a decision keep it. Writes the same files as `soundtag review`.

    Example:

      soundtag clean runs/esc10 --auto --max-fraction 0.05
    """
    from soundtag.cleaning import auto_clean, retrain_command
    from soundtag.reports import decisions_table

    if not auto:
        raise typer.BadParameter("clean needs --auto; to decide by ear, run `soundtag review RUN`")
    folder = _lists_dir(run, lists)
    taken = auto_clean(run, folder, max_fraction=max_fraction, relabel_above=relabel_above)
    console.print(decisions_table(f"clean --auto: {len(taken)} decision(s)", taken))
    console.print(
        f"wrote {folder / 'blacklist.csv'} and {folder / 'relabel.csv'}; retrain with:\n  "
        f"{retrain_command(run, folder)}",
        soft_wrap=True,
    )


def self_verify(
    run: Path = typer.Argument(..., help="a finished run trained on the noisy labels"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="rounds of decide-then-retrain"),
    threshold: str = typer.Option(
        "0.95",
        "--threshold",
        help="out-of-fold posterior of its own label an "
        "unverified clip needs to be kept, or 'auto': the level the model reaches on 80% "
        "of the verified clips (for models whose posteriors are spread, e.g. by mixup)",
    ),
    per_class: Optional[int] = typer.Option(
        None, "--per-class", min=0, help="keep at most N unverified clips a class (the most confident); default: no cap"
    ),
    relabel_above: Optional[float] = typer.Option(
        None,
        "--relabel-above",
        help="relabel a clip when the model is at least this sure of another label (default: drop it)",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="folder of the rounds (default: RUN-self-verify)"),
    progress: bool = typer.Option(True, help="progress bars"),
):
    """Self-verification (2nd place, FSDKaggle2018): keep an unverified label only where the
    out-of-fold posterior for it reaches the threshold, retrain without the rest, repeat.

    Each round is an ordinary run directory with a lists folder like the blacklist loop's (the
    reason for every dropped clip in decisions.csv); report.csv counts what each round kept,
    relabelled and dropped. Run it again after a crash: finished rounds are not redone.

    Examples:

      soundtag self-verify runs/fsd2018 --rounds 3 --threshold 0.95 --per-class 40

      soundtag self-verify runs/esc10 --rounds 2 --relabel-above 0.95 --out runs/esc10-sv
    """
    from rich.table import Table

    from soundtag.cleaning import self_verify as run_rounds

    if threshold != "auto":
        try:
            threshold = float(threshold)
        except ValueError:
            raise typer.BadParameter(
                f"--threshold {threshold!r}: give a number in (0, 1], e.g. 0.95, or 'auto'"
            ) from None
    for name, value in (("--threshold", threshold), ("--relabel-above", relabel_above)):
        if isinstance(value, float) and not 0 < value <= 1:
            raise typer.BadParameter(f"{name} {value} must be in (0, 1], e.g. 0.95")
    with on_stop(
        rerun_note(lambda: "finished rounds and folds are kept, an unfinished fold goes on from its last saved epoch")
    ):
        reports = run_rounds(
            run,
            out,
            rounds=rounds,
            threshold=threshold,
            per_class=per_class,
            relabel_threshold=relabel_above,
            progress=progress,
        )
    table = Table(title=f"self-verify {run}: unverified clips per round")
    for column in ("round", "threshold", "kept", "relabelled", "dropped", "top-1 out of fold", "run"):
        table.add_column(column)
    for r in reports:
        table.add_row(
            str(r.round),
            f"{r.threshold:.3g}",
            f"{r.accepted} of {r.unverified}",
            str(r.relabelled),
            str(r.dropped),
            "" if r.top1 is None else f"{100 * r.top1:.1f}%",
            r.run,
        )
    console.print(table)
    console.print(
        f"lists of the last round: {reports[-1].lists}; report: {Path(reports[-1].run).parents[1] / 'report.csv'}",
        soft_wrap=True,
    )


COMMANDS = (suspects, review, clean, self_verify)
