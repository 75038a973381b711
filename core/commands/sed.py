"""`soundscapes`: URBAN-SED-style mixtures to measure detection on; `evaluate-sed`: the field's SED metrics."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("soundscapes", short_help="URBAN-SED-style soundscapes (with annotations) from chosen folds.")(
        soundscapes)
    app.command("evaluate-sed", short_help="sed_eval segment/event F1 and error rate, and PSDS1/2, of an event "
                                           "list.")(evaluate_sed)


def parse_soundscape_folds(text: str) -> tuple[int, ...]:
    """--folds 9,10 -> (9, 10): folds of UrbanSound8K (1-10), each once."""
    from core.errors import UserError
    from core.folds import ALL_FOLDS

    try:
        folds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"--folds takes fold numbers separated by commas (e.g. 9,10); got {text!r}") from None
    if not folds or any(fold not in ALL_FOLDS for fold in folds) or len(set(folds)) != len(folds):
        raise UserError(f"--folds takes distinct folds of 1-10 (e.g. 9,10); got {text!r}")
    return folds


def soundscapes(
    data: Path = typer.Option(..., help="UrbanSound8K in the official layout (audio/fold1..fold10, "
                                        "metadata/UrbanSound8K.csv); the demo set: `./run.sh synth --layout official`."),
    folds: str = typer.Option(..., help="Folds whose clips make the events, e.g. 9,10 (the competition's test "
                                        "folds, which the kaggle fold models never saw)."),
    out: Path = typer.Option(..., help="A new (or empty) folder for audio/, annotations/, jams/, events.tsv."),
    n: int = typer.Option(1000, "--n", min=1, help="Soundscapes to make."),
    duration: float = typer.Option(10.0, min=1.0, help="Seconds per soundscape (URBAN-SED: 10)."),
    seed: int = typer.Option(0, min=0, max=2**31 - 1, help="Soundscape i is drawn from (seed, i): the same seed gives the same files."),
    augment: bool = typer.Option(True, help="Pitch shift (uniform -3..3 semitones) and time stretch (uniform "
                                            "0.8..1.2, a factor on the length) each event, as URBAN-SED; "
                                            "--no-augment: the excerpts as they are."),
) -> None:
    """Make URBAN-SED-style soundscapes from the clips of --folds only (Salamon et al. 2017, the Scaper paper).

    Settings of URBAN-SED's generation scripts (github.com/justinsalamon/scaper_waspaa2017, notebooks/2_generate_*): each --duration s at 44.1 kHz over Brownian noise; 1-9 events (uniform), label uniform, clip uniform within the class (no clip twice in a soundscape), the clip's first 0.5-4 s (uniform, at most the clip), onset uniform over the soundscape, truncated normal around its middle (std a fifth of it) or around 30 % / 70 % (a third of the soundscapes each, as URBAN-SED's uniform / unimodal / bimodal subsets), moved earlier when the event would end after the soundscape; SNR uniform 6-30 dB, pitch shift uniform -3..3 semitones, time stretch uniform 0.8..1.2 (a factor on the length). Differences from Scaper (not used: it needs the SoX binary): SNR from RMS levels, not LUFS; librosa's phase vocoder for pitch and stretch; no reverb; a mixture over full scale is scaled down. Writes audio/*.wav, annotations/*.txt (URBAN-SED), jams/*.jams, events.tsv (DCASE) and soundscapes.json (the folds used: detect refuses a solution that trained on them unless --allow-fold-leakage).
    """
    from rich.console import Console

    from core.atomic import check_writable
    from core.data.soundscapes import SoundscapeSettings, write_soundscapes

    chosen = parse_soundscape_folds(folds)
    check_writable(out.parent if str(out.parent) else Path("."))
    written = write_soundscapes(data, chosen, out, n, seed, SoundscapeSettings(duration=duration, augment=augment))
    Console(stderr=True).print(f"wrote {n} soundscape(s) from folds {','.join(map(str, chosen))} to {written}",
                               highlight=False)


def evaluate_sed(
    events: Path = typer.Option(..., help="Predicted event list TSV (detect --events)."),
    reference: Path = typer.Option(..., help="Reference: an event list TSV, a soundscapes folder, or URBAN-SED's "
                                             "annotations (the dataset folder, annotations/, or annotations/<split>)."),
    scores: Path | None = typer.Option(None, help="Score tables (detect --scores) for PSDS1 and PSDS2."),
    as_json: bool = typer.Option(False, "--json", help="Print every figure as JSON instead of tables."),
) -> None:
    """Score an event list with sed_eval (segment-based on 1 s segments; event-based with a 200 ms onset collar and an offset collar of 200 ms or 20 % of the event's length) and, with --scores, PSDS1/PSDS2 (DCASE task 4 settings) with sed_scores_eval. Per class and overall."""
    import json

    from core.sed.evaluate import event_metrics, psds_metrics
    from core.sed.formats import read_event_list, read_reference, score_table_classes

    truth, files = read_reference(reference)
    model_classes = score_table_classes(scores, files) if scores is not None else []
    figures = event_metrics(read_event_list(events), truth, files, model_classes)
    if scores is not None:
        figures["psds"] = psds_metrics(scores, truth, files)
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
    else:
        print_figures(figures)


def print_figures(figures: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console = console if console.is_terminal else Console(width=200)
    table = Table(title=f"Sound event detection, {figures['files']} file(s)")
    for column in ("class", "segment F1", "segment ER", "event F1", "event ER"):
        table.add_column(column, justify="left" if column == "class" else "right")
    segment, event = figures["segment_based"], figures["event_based"]
    for label in segment["per_class"]:
        table.add_row(label, *(f"{block[key]:.3f}" for block in (segment["per_class"][label],
                                                                   event["per_class"][label])
                               for key in ("f1", "error_rate")))
    table.add_row("overall (micro)", *(f"{block['overall'][key]:.3f}" for block in (segment, event)
                                       for key in ("f1", "error_rate")), style="bold")
    console.print(table)
    if "psds" in figures:
        psds = figures["psds"]
        console.print(f"PSDS1 {psds['psds1']:.3f}   PSDS2 {psds['psds2']:.3f}   (over the {len(psds['classes'])} "
                      "class(es) with reference events)", highlight=False)
