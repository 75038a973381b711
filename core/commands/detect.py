"""`detect`: sound events (onset, offset, label) in recordings of any length, in the field's formats."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.commands.options import Device, Precision, Progress

# Post-processing options, shared with `monitor` (core/infer/events.py documents the rules).
Hop = Annotated[float, typer.Option(min=0.01, help="Seconds between frames; each frame is scored by the "
                                                   "clip-long window centred on it.")]
On = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Score at which an event opens, every class "
                                          "(given --on/--off replace the tuned thresholds; hand-set default 0.5).")]
Off = Annotated[float | None, typer.Option(min=0.0, max=1.0, help="An open event stays open while its score stays "
                                           "at or above this (hysteresis; at most --on; hand-set default 0.3).")]
Median = Annotated[float, typer.Option(min=0.0, help="Median filter length in seconds (rounded to an odd number "
                                                     "of frames; 0 or one hop: none).")]
MinLength = Annotated[float, typer.Option(min=0.0, help="Events shorter than this (seconds) are dropped.")]
MinGap = Annotated[float, typer.Option(min=0.0, help="Events of one class separated by at most this (seconds) "
                                                     "are merged.")]
Thresholds = Annotated[Path | None, typer.Option(help="Per-class thresholds: a CSV event_label,on,off (one row "
                                                      "per class); overrides --on/--off. Default: the solution's "
                                                      "detect_thresholds.csv (tune-detect) where it exists.")]
HAND_SET_ON, HAND_SET_OFF = 0.5, 0.3


def register(app: typer.Typer) -> None:
    app.command("detect", short_help="Sound events (onset, offset, label) in recordings of any length.")(detect)


def post_processing(hop: float, on: float | None, off: float | None, median: float, min_length: float,
                    min_gap: float, thresholds: Path | None, classes: tuple[str, ...], tuned: Path | None = None):
    """The PostProcessing the options describe for a model of `classes`, and a line saying where its thresholds come from.

    Thresholds: --thresholds FILE; else --on/--off where given (the other one hand-set); else `tuned` (the
    solution's tune-detect file) where it exists; else the hand-set 0.5 / 0.3.
    """
    from core.errors import UserError
    from core.infer.events import PostProcessing, load_thresholds, median_frames_for

    frames = median_frames_for(median, hop) if median > 0 else 1
    if thresholds is not None:
        return load_thresholds(thresholds, frames, min_length, min_gap, classes), f"thresholds: per class from {thresholds}"
    if on is None and off is None and tuned is not None and Path(tuned).is_file():
        return (load_thresholds(tuned, frames, min_length, min_gap, classes),
                f"thresholds: per class, tuned out of fold ({tuned}; --thresholds or --on/--off to override)")
    given = on is not None or off is not None
    on = HAND_SET_ON if on is None else on
    off = HAND_SET_OFF if off is None else off
    if off > on:
        raise UserError(f"--off {off:g} is above --on {on:g}: an event must stay open at least as long as it "
                        "takes to open (use --off <= --on)")
    if given:
        source = f"thresholds: --on {on:g} / --off {off:g}, every class"
    else:
        source = (f"thresholds: hand-set defaults, on {on:g} / off {off:g}, every class ("
                  + (f"no {tuned}; `python -m core tune-detect` writes one" if tuned is not None else
                     "tuned thresholds belong to one --solution, not to a blend, recipe or ONNX model") + ")")
    return PostProcessing.uniform(on, off, frames, min_length, min_gap, classes), source


def tuned_thresholds(solution: list[str] | None, solutions: Path) -> Path | None:
    """The tune-detect file of a single --solution (kaggle folder), else None (blends, recipes, ONNX)."""
    from core.solution_folder import SolutionFolder

    return SolutionFolder.of(solutions, solution[0]).detect_thresholds if solution and len(solution) == 1 else None


def detect(
    sources: list[Path] = typer.Argument(..., help="Audio files and/or folders (searched recursively)."),
    solution: list[str] | None = typer.Option(None, "--solution", help="A trained solution (repeat for several: "
                                                                          "equal-weight blend)."),
    recipe: Path | None = typer.Option(None, help="A solution-level blend recipe TOML, as `classify` reads it."),
    onnx: Path | None = typer.Option(None, help="Run an exported model (`export`) with onnxruntime instead."),
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
    hop: Hop = 0.5,
    on: On = None,
    off: Off = None,
    median: Median = 1.5,
    min_length: MinLength = 0.5,
    min_gap: MinGap = 0.5,
    thresholds: Thresholds = None,
    salience: str = typer.Option("marginal", help="For fusion solutions: marginal | 1 | 2 | a CSV file,salience "
                                                  "(as in classify)."),
    batch_size: int = typer.Option(32, min=1, help="Windows per batch (one strip of audio: the mel frames they "
                                                   "share are computed once)."),
    backbone_once: bool = typer.Option(False, "--backbone-once", help="Run PCEN and the backbone once per strip "
                                       "of --batch-size windows and pool each window's slice of the feature maps: "
                                       "several times faster, not the per-window computation (its measured F1: "
                                       "benchmarks/README.md)."),
    events: Path | None = typer.Option(None, help="Event list TSV (DCASE): filename onset offset event_label."),
    scores: Path | None = typer.Option(None, help="Folder for one score TSV per file (onset offset <classes>), "
                                                  "as sed_scores_eval reads them."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (files, events, bad files) instead of a table."),
    plot: Path | None = typer.Option(None, help="Folder for a PNG per file: scores over time, events as bars."),
    reference: Path | None = typer.Option(None, help="Reference events (event list TSV, soundscapes folder or "
                                                     "URBAN-SED annotations) drawn in the --plot figures."),
    allow_fold_leakage: bool = typer.Option(False, "--allow-fold-leakage", help="Detect on soundscapes made from "
                                            "folds the fold models trained or validated on (scores optimistic)."),
    skip_bad_audio: bool = typer.Option(False, "--skip-bad-audio", help="Exit 0 although some files could not be "
                                                                        "decoded (they are listed, without events)."),
    device: Device = "auto",
    precision: Precision = "auto",
    progress: Progress = True,
) -> None:
    """Detect sound events: class scores every --hop seconds from overlapping windows, then events.

    Post-processing, per class: median filter (--median), hysteresis thresholds (an event opens at --on and closes below --off; --thresholds FILE for per-class values), gaps up to --min-gap merged, events shorter than --min-length dropped. A class never has two overlapping events, so overlapping windows give no duplicates. Thresholds by default: the solution's detect_thresholds.csv where `tune-detect` wrote one (chosen out of fold: each fold model on soundscapes of its own validation fold), else hand-set 0.5 / 0.3; a stderr line says which. The time rules (1.5 s, 0.5 s, 0.5 s) are set by hand. Files that cannot be decoded get no events and make the exit code 2 (0 with --skip-bad-audio).
    """
    import json

    from rich.console import Console
    from rich.markup import escape

    from core.atomic import check_writable
    from core.commands.classify import blend_members
    from core.commands.outcome import finish
    from core.errors import UserError
    from core.infer.detect import as_json as to_json
    from core.infer.detect import check_soundscape_leakage, events_frame
    from core.infer.predictors import onnx_predictor, torch_predictor
    from core.infer.salience import parse_salience
    from core.infer.sources import find_audio
    from core.sed.formats import read_reference, write_event_list

    chosen = [option for option, value in (("--solution", solution), ("--recipe", recipe), ("--onnx", onnx)) if value]
    if len(chosen) != 1:
        raise UserError("give exactly one of --solution NAME (repeatable), --recipe FILE.toml or --onnx FILE.onnx"
                        + (f"; got {' and '.join(chosen)}" if chosen else ""))
    files = find_audio(sources)
    if events is not None:
        check_writable(events.parent if str(events.parent) else Path("."))
    for folder in (scores, plot):
        if folder is not None:
            check_writable(folder)
    reference_events = read_reference(reference)[0] if reference is not None else None
    policy = parse_salience(salience, files)
    if onnx is not None:
        spec = onnx_predictor(onnx)
    else:
        names, weights, method = blend_members(solution, recipe)
        spec = torch_predictor(names, weights, method, solutions, device, precision)
    rules, rules_source = post_processing(hop, on, off, median, min_length, min_gap, thresholds, spec.class_names,
                                          tuned_thresholds(solution, solutions))
    console = Console(stderr=True)
    console.print(rules_source, highlight=False, markup=False, soft_wrap=True)
    leakage = check_soundscape_leakage(files, spec.fold_keys, allow_fold_leakage)
    if leakage:
        console.print(f"[bold yellow]warning:[/] {escape(leakage)} (--allow-fold-leakage)", highlight=False)
    if backbone_once and spec.predict_strip is None:
        raise UserError("--backbone-once needs PyTorch models (--solution or --recipe); an ONNX graph takes "
                        "fixed-length windows")
    result = run_detection(files, spec, rules, hop, policy, batch_size, progress and len(files) > 1, console,
                           backbone_once)
    table = events_frame(result)
    written = []
    if events is not None:
        write_event_list(table, events)
        written.append(str(events))
    if scores is not None:
        written.append(f"{write_scores(result, scores)} score table(s) in {scores}")
    if plot is not None:
        written.append(f"{write_plots(result, table, reference_events, plot)} figure(s) in {plot}")
    if as_json:
        typer.echo(json.dumps(to_json(result), indent=2))
    else:
        print_events(result, spec.description)
    finish(console, result.bad, len(files), written, "could not read", "no events", skip_bad_audio)


def run_detection(files, spec, rules, hop, policy, batch_size, show_bar, console, backbone_once=False):
    """detect_files with a bar over the files when there are several."""
    from core.infer.detect import detect_files
    from core.progress import progress_bar

    with progress_bar(len(files), "detect", console=console, enabled=show_bar) as advance:
        return detect_files(files, spec, rules, hop_seconds=hop, salience=policy, batch_size=batch_size,
                            on_progress=advance, backbone_once=backbone_once)


def write_scores(result, folder: Path) -> int:
    """One score TSV per file in `folder`."""
    from core.errors import UserError
    from core.infer.detect import scores_frame
    from core.sed.formats import audio_id, write_score_table

    ids = [audio_id(f.path.name) for f in result.files]
    repeated = sorted({name for name in ids if ids.count(name) > 1})
    if repeated:
        raise UserError(f"--scores: several files share the audio id {repeated[0]!r} (file name without extension); "
                        "score tables are named by it: detect them separately")
    for detected in result.files:
        write_score_table(scores_frame(detected), folder, detected.path.name)
    return len(result.files)


def write_plots(result, table, reference, folder: Path) -> int:
    """A PNG per file (scores, events, and the reference events of that file when given)."""
    from core.infer.classify import plot_names
    from core.infer.detect import event_name
    from core.sed.plot import plot_detection

    for (path, png), detected in zip(plot_names([f.path for f in result.files], folder), result.files, strict=True):
        name = event_name(path)
        mine = table[table["filename"] == name]
        theirs = None if reference is None else reference[reference["filename"] == name]
        plot_detection(detected.frame_scores, detected.hop_s, detected.duration_s, detected.class_names, mine, theirs,
                       f"{name}: class scores every {detected.hop_s:g} s and detected events", png)
    return len(result.files)


def print_events(result, description: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console = console if console.is_terminal else Console(width=200)
    table = Table(title=f"Events detected with {description}")
    for column in ("file", "onset", "offset", "event"):
        table.add_column(column, justify="right" if column in ("onset", "offset") else "left")
    for f in result.files:
        for event in f.events:
            table.add_row(str(f.path), f"{event.onset:.2f}", f"{event.offset:.2f}", event.label)
        if not f.events:
            table.add_row(str(f.path), "", "", "(no events)")
    console.print(table)
