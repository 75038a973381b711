"""`classify`: classify recordings of any length; `export`: write a solution as one ONNX graph."""
from __future__ import annotations

from pathlib import Path

import typer

from core.commands.options import OPSET_MAX, OPSET_MIN, Device, Precision, Progress, any_fold_list, positive


def register(app: typer.Typer) -> None:
    app.command("classify", short_help="Classify recordings of any length with trained solutions or an exported "
                                       "ONNX model.")(classify)
    app.command("export", short_help="Write a solution's fold models as one ONNX graph (mel + PCEN inside).")(export)


def classify(
    sources: list[Path] = typer.Argument(..., help="Audio files and/or folders (searched recursively for the "
                                                   "formats soundfile reads: wav, flac, ogg, aiff, ...)."),
    solution: list[str] | None = typer.Option(None, "--solution", help="A trained solution (repeat for several: "
                                                                          "equal-weight blend)."),
    recipe: Path | None = typer.Option(None, help="A solution-level blend recipe TOML ([solutions] weights), "
                                                     "as `blend` reads it."),
    onnx: Path | None = typer.Option(None, help="Run an exported model (`export`) with onnxruntime instead."),
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
    hop: float = typer.Option(1.0, callback=positive, help="Seconds between window starts in files longer than one clip."),
    aggregate: str = typer.Option("mean", help="A file's probabilities from its windows: mean (how much of the "
                                               "recording sounds like each class) | max (the strongest window per "
                                               "class; rows need not sum to 1)."),
    salience: str = typer.Option("marginal", help="For fusion solutions: marginal (average of salience 1 and 2: "
                                                  "an even prior) | 1 (foreground) | 2 (background) | a CSV "
                                                  "file,salience. Other solutions ignore it."),
    batch_size: int = typer.Option(32, min=1, help="Windows per batch (windows of several files share a batch)."),
    out: Path | None = typer.Option(None, help="CSV, one row per file: file,duration_s,TARGET,<class names>."),
    windows: Path | None = typer.Option(None, help="CSV, one row per window: file,start_s,end_s,TARGET,..."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (files, probabilities, bad files) instead of a table."),
    plot: Path | None = typer.Option(None, help="Folder for a PNG timeline of each file longer than one clip."),
    skip_bad_audio: bool = typer.Option(False, "--skip-bad-audio", help="Exit 0 although some files could not be "
                                                                        "decoded (they are listed, without rows)."),
    device: Device = "auto",
    precision: Precision = "auto",
    progress: Progress = True,
) -> None:
    """Classify each recording with every fold model of the solutions (or an exported ONNX model).

    Files longer than the model's clip are cut into windows every --hop seconds (the last window ends at the end of the file); a file's probabilities aggregate its windows (--aggregate). TARGET is the most probable class's name. Files that cannot be decoded get no row and make the exit code 2 (0 with --skip-bad-audio).
    """
    import json

    from rich.console import Console

    from core.atomic import check_writable, write_csv
    from core.commands.outcome import finish
    from core.errors import UserError
    from core.infer.classify import (
        estimated_windows,
        file_frame,
        find_audio,
        onnx_predictor,
        parse_salience,
        torch_predictor,
        window_frame,
        write_timelines,
    )

    chosen = [option for option, value in (("--solution", solution), ("--recipe", recipe), ("--onnx", onnx)) if value]
    if len(chosen) != 1:
        raise UserError("give exactly one of --solution NAME (repeatable), --recipe FILE.toml or --onnx FILE.onnx"
                        + (f"; got {' and '.join(chosen)}" if chosen else ""))
    files = find_audio(sources)
    for target in (out, windows):
        if target is not None:
            check_writable(target.parent if str(target.parent) else Path("."))
    if plot is not None:
        check_writable(plot)
    policy = parse_salience(salience, files)
    if onnx is not None:
        spec = onnx_predictor(onnx)
    else:
        names, weights, method = blend_members(solution, recipe)
        spec = torch_predictor(names, weights, method, solutions, device, precision)
    console = Console(stderr=True)
    clip_seconds = spec.num_samples / spec.sample_rate
    show_bar = progress and estimated_windows(files, clip_seconds, hop) > 2 * batch_size
    result = run_with_progress(files, spec, hop, aggregate, policy, batch_size, show_bar, console)
    if out is not None:
        write_csv(file_frame(result), out)
    if windows is not None:
        write_csv(window_frame(result), windows)
    plotted = write_timelines(result, plot) if plot is not None else []
    if as_json:
        from core.infer.classify import as_json as to_json

        typer.echo(json.dumps(to_json(result), indent=2))
    else:
        table_console = Console()
        print_table(result, spec.description, table_console if table_console.is_terminal else Console(width=200))
    written = [str(p) for p in (out, windows) if p is not None] + ([f"{len(plotted)} timeline(s) in {plot}"]
                                                                  if plot is not None else [])
    finish(console, result.bad, len(files), written, "could not classify", "no row", skip_bad_audio)


def blend_members(solution: list[str] | None, recipe: Path | None) -> tuple[list[str], list[float], str]:
    """(solution names, weights, blend method) from --solution names or a solution-level blend recipe."""
    from core.blend import load_blend_recipe
    from core.errors import UserError

    if solution:
        return list(dict.fromkeys(solution)), [1.0] * len(dict.fromkeys(solution)), "mean"
    blend = load_blend_recipe(recipe)
    if not all(member.solution for member in blend.members):
        raise UserError(f"{recipe}: classify needs a solution-level recipe (a [solutions] table of weights); this "
                        "one lists probability CSV files, which belong to one test set")
    if blend.method == "rank":
        raise UserError(f"{recipe}: method 'rank' scores rows relative to the other rows of one test set; classify "
                        "needs probabilities: use method 'mean' or 'geomean'")
    return [m.name for m in blend.members], [m.weight for m in blend.members], blend.method


def run_with_progress(files, spec, hop, aggregate, policy, batch_size, show_bar, console):
    """classify_files with a bar over the files when there is more than a few batches of work."""
    from core.infer.classify import classify_files
    from core.progress import progress_bar

    with progress_bar(len(files), "classify", console=console, enabled=show_bar) as advance:
        return classify_files(files, spec, hop_seconds=hop, aggregate=aggregate, salience=policy,
                              batch_size=batch_size, on_progress=advance)


def print_table(result, description: str, console) -> None:
    from rich.table import Table

    from core.infer.classify import top_classes

    table = Table(title=f"Classified with {description}")
    for column in ("file", "duration", "windows", "1st", "2nd", "3rd"):
        table.add_column(column, justify="right" if column in ("duration", "windows") else "left")
    for f in result.files:
        top = [f"{result.class_names[c]} {f.probs[c]:.2f}" for c in top_classes(f.probs)]
        table.add_row(str(f.path), f"{f.duration_s:.2f} s", str(len(f.starts_s)), *top)
    console.print(table)


def export(
    solution: str = typer.Argument(..., help="A trained solution (its checkpoints are in --solutions/<solution>)."),
    out: Path = typer.Option(..., help="The ONNX file to write."),
    folds: str | None = typer.Option(None, callback=any_fold_list, help="Fold models to include, e.g. 1,3 "
                                                                       "[default: every one trained]."),
    opset: int | None = typer.Option(None, min=OPSET_MIN, max=OPSET_MAX, help="ONNX opset version "
                                                                           "[default: the exporter's]."),
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
) -> None:
    """Write SOLUTION's fold models as one ONNX graph that runs with onnxruntime alone.

    Inputs: waveforms float32 [batch, num_samples] (mono at the model's sample rate), plus salience int64 [batch] (1 foreground, 2 background) for the fusion solutions. Output: the fold-averaged class probabilities [batch, classes] (the class names are in the file's metadata). The mel spectrogram and PCEN are inside the graph; the batch size is free.
    """
    from rich.console import Console

    from core.atomic import check_writable
    from core.commands.train import parse_folds
    from core.export import export_onnx
    from core.solution_folder import SolutionFolder

    check_writable(out.parent if str(out.parent) else Path("."))
    exported = export_onnx(SolutionFolder.of(solutions, solution).root, solution, out, parse_folds(folds), opset)
    inputs = f"waveforms [batch, {exported.num_samples}] float32" + (" + salience [batch] int64 (1|2)"
                                                                      if exported.uses_salience else "")
    Console(stderr=True).print(f"wrote {out}: {solution}, folds {','.join(map(str, exported.folds))}, {inputs} at "
                               f"{exported.sample_rate} Hz -> probabilities [batch, {len(exported.class_names)}]",
                               highlight=False, markup=False)  # the shapes in [...] are not rich markup
