"""`monitor`: live sound event detection on a stream (raw PCM on standard input, or a microphone)."""
from __future__ import annotations

from pathlib import Path

import typer

from core.commands.detect import Hop, Median, MinGap, MinLength, Off, On, Thresholds
from core.commands.options import Device, Precision

REPORT_EVERY_S = 10.0  # how often (audio seconds) a pipe that runs slower than real time is reported


def register(app: typer.Typer) -> None:
    app.command("monitor", short_help="Live sound events from a stream (stdin PCM or a microphone), one JSON "
                                      "line each.")(monitor)


def monitor(
    input_: str = typer.Option(..., "--input", help="- (raw PCM on standard input) | mic (the default input device, "
                                                    "through sounddevice)."),
    solution: list[str] | None = typer.Option(None, "--solution", help="A trained solution (repeat: blend)."),
    onnx: Path | None = typer.Option(None, help="Run an exported model (`export`) with onnxruntime instead."),
    solutions: Path = typer.Option(Path("solutions"), help="Folder holding the solution folders."),
    sample_format: str = typer.Option("s16le", "--format", help="Raw PCM sample format on stdin: s16le | f32le."),
    rate: int = typer.Option(22050, min=1, help="Samples per second of the stream (must be the model's)."),
    channels: int = typer.Option(1, min=1, help="Interleaved channels of the stream (averaged to mono)."),
    hop: Hop = 0.5,
    on: On = None,
    off: Off = None,
    median: Median = 1.5,
    min_length: MinLength = 0.5,
    min_gap: MinGap = 0.5,
    thresholds: Thresholds = None,
    salience: str = typer.Option("marginal", help="For fusion solutions: marginal | 1 | 2."),
    every_hop: bool = typer.Option(False, "--every-hop", help="Also print one line per hop with the top classes."),
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Print one JSON line per sound event as soon as it has ended ({"onset", "offset", "event_label"}, seconds from the start of the stream), with the post-processing of `detect` (same options, same events for the same samples). Open events are flushed at the end of the stream or on Ctrl-C.

    From a pipe (`arecord -f S16_LE -r 22050 -c 1 -t raw | python -m core monitor --input - ...`; `sox -d -t raw -b 16 -e signed -r 22050 -c 1 -`; `ffmpeg ... -f s16le -ar 22050 -ac 1 -`) every window is classified (the pipe paces the producer) and a stderr line says when it runs slower than real time, by how much. From the microphone (--input mic, needs the sounddevice package and PortAudio) windows are dropped when computation falls behind, and counted.
    """
    import sys

    from core.commands.classify import blend_members
    from core.commands.detect import post_processing, tuned_thresholds
    from core.errors import UserError
    from core.infer.predictors import onnx_predictor, torch_predictor
    from core.infer.salience import parse_salience
    from core.infer.stream import StreamDetector, check_stream_format

    if input_ not in ("-", "mic"):
        raise UserError(f"--input takes - (raw PCM on stdin) or mic; got {input_!r}")
    if bool(solution) == bool(onnx):
        raise UserError("give exactly one of --solution NAME (repeatable) or --onnx FILE.onnx")
    if salience not in ("marginal", "1", "2"):
        raise UserError(f"--salience for a stream takes marginal, 1 or 2; got {salience!r}")
    microphone = microphone_module() if input_ == "mic" else None  # before the models load: fail fast
    if onnx is not None:
        spec = onnx_predictor(onnx)
    else:
        names, weights, method = blend_members(solution, None)
        spec = torch_predictor(names, weights, method, solutions, device, precision)
    rules, rules_source = post_processing(hop, on, off, median, min_length, min_gap, thresholds, spec.class_names,
                                          tuned_thresholds(solution, solutions))
    check_stream_format(sample_format, rate, channels, spec)
    note(rules_source)
    on_frame = print_hop_line(spec, hop) if every_hop else None
    # StreamDetector's batches (32 windows, as detect's): a live source fills one window per hop anyway, a pipe
    # that is ahead fills whole batches (run_pipe reads up to a batch of hops at a time).
    detector = StreamDetector(spec, rules, hop, parse_salience(salience, []).values_for(Path("-")), on_frame=on_frame)
    try:
        if input_ == "-":
            run_pipe(detector, sys.stdin.buffer, sample_format, channels)
        else:
            run_microphone(microphone, detector, rate, channels)
    except KeyboardInterrupt:
        pass  # Ctrl-C: flush what is open, as at the end of a stream
    for event in detector.finish():
        print_event(event)
    summarise(detector)


def print_event(event) -> None:
    import json

    print(json.dumps({"onset": event.onset, "offset": event.offset, "event_label": event.label}), flush=True)


def print_hop_line(spec, hop: float):
    """A callback printing frame k's top three classes as one JSON line."""
    import json

    import numpy as np

    def on_frame(frame: int, scores) -> None:
        top = np.argsort(-scores, kind="stable")[:3]
        print(json.dumps({"hop": frame, "start": round(frame * hop, 6),
                          "top": [[spec.class_names[c], round(float(scores[c]), 4)] for c in top]}), flush=True)

    return on_frame


def run_pipe(detector, stream, sample_format: str, channels: int) -> None:
    """Every window of the stream, in order; a stderr note whenever it falls behind real time."""
    from core.infer.stream import SAMPLE_FORMATS, read_pcm, widen_pipe

    reported_at = 0.0
    # Up to a batch of hops at a time: a pipe that is ahead fills whole batches of windows (scored together) once
    # it can hold a batch's bytes (a Linux pipe holds 64 KiB, about 2 hops, unless widened; at most 1 MiB).
    block_frames = detector.grid.hop * detector.batch_size
    widen_pipe(stream, block_frames * SAMPLE_FORMATS[sample_format][0].itemsize * channels)
    for block in read_pcm(stream, sample_format, channels, block_frames, detector.stats):
        for event in detector.feed(block):
            print_event(event)
        stats = detector.stats
        if stats.audio_seconds - reported_at >= REPORT_EVERY_S and stats.speed < 1.0:
            reported_at = stats.audio_seconds
            note(f"monitor: {1 / stats.speed:.2f}x slower than real time ({stats.audio_seconds:.0f} s of audio took "
                 f"{stats.compute_seconds:.0f} s); the producer is paced by the pipe")


def one_line(error: BaseException) -> str:
    """An exception's message on one line (PortAudio's can span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def microphone_module():
    """sounddevice, checked to have PortAudio and a default input device; else a one-line UserError (exit 2)."""
    from core.errors import UserError

    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: the package is there but PortAudio is not
        raise UserError(f"--input mic needs the sounddevice package and the PortAudio library ({one_line(error)}); "
                        "install them (pip install sounddevice; apt install libportaudio2), or pipe raw PCM into "
                        "--input -") from None
    try:
        sounddevice.query_devices(kind="input")
    except Exception as error:  # PortAudio reports a missing default device in its own exception types
        raise UserError(f"--input mic: no input device ({one_line(error)}); connect a microphone, or pipe raw PCM "
                        "into --input -") from None
    return sounddevice


def run_microphone(sounddevice, detector, rate: int, channels: int) -> None:
    """The default input device through sounddevice; audio beyond one clip of backlog is dropped and counted."""
    import queue

    import numpy as np

    from core.errors import UserError

    blocks: queue.Queue = queue.Queue()
    try:
        stream = sounddevice.InputStream(samplerate=rate, channels=channels, dtype="float32",
                                         blocksize=detector.grid.hop, callback=lambda data, *_: blocks.put(data.copy()))
    except Exception as error:  # a busy device, or one that refuses this rate or channel count
        raise UserError(f"--input mic: the input device cannot record {channels} channel(s) at {rate} Hz "
                        f"({one_line(error)}); check --rate/--channels, or pipe raw PCM into --input -") from None
    with stream:
        while True:
            parts = [blocks.get()]
            while not blocks.empty():
                parts.append(blocks.get())
            audio = np.concatenate(parts).mean(axis=1, dtype=np.float32)
            backlog = len(audio) - detector.grid.clip
            events = []
            if backlog > 0:  # behind: skip the oldest audio and start again after it
                events = detector.restart_after_gap(backlog)
                audio = audio[backlog:]
            for event in events + detector.feed(audio):
                print_event(event)


def summarise(detector) -> None:
    stats = detector.stats
    parts = [f"{stats.windows} window(s), {stats.audio_seconds:.1f} s of audio at {stats.speed:.1f}x real time"]
    if stats.dropped_windows:
        parts.append(f"{stats.dropped_windows} window(s) dropped while behind")
    if stats.trailing_bytes:
        parts.append(f"the stream ended inside a sample frame: its last {stats.trailing_bytes} byte(s) were ignored")
    note("monitor: " + "; ".join(parts))


def note(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)
