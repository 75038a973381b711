"""monitor: a stream gives the events detect finds in the same samples; a cut stream ends cleanly."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile
from conftest import REPO, demo_clip, save_fold_checkpoints, subprocess_env, tiny

from core import CLASS_NAMES
from core.infer.detect import FrameGrid, detect_files
from core.infer.events import PostProcessing
from core.infer.predictors import ModelSpec, torch_predictor
from core.infer.stream import StreamDetector, StreamStats, read_pcm, widen_pipe

BASELINE = "resnet34_pcen_sam_8fold"
RATE = 8000  # the tiny recipe's rate


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("solutions")
    save_fold_checkpoints(root, BASELINE, folds=(1, 2), recipe=tiny(BASELINE))
    return root, torch_predictor([BASELINE], [1.0], "mean", root, "cpu", "fp32")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """30 s of real-looking clips of several classes at the model's rate, as 16-bit PCM."""
    signal = np.concatenate([demo_clip(index, RATE, 4 * RATE) for index in (1, 3, 6, 8, 2, 5, 9, 0)])[: 30 * RATE]
    path = tmp_path_factory.mktemp("stream") / "street.wav"
    soundfile.write(path, signal, RATE, subtype="PCM_16")
    return path


def thresholds_with_events(scores: np.ndarray) -> PostProcessing:
    """Thresholds at quantiles of these (untrained) scores, so some events open and close."""
    on = tuple(float(np.quantile(scores[:, c], 0.7)) for c in range(len(CLASS_NAMES)))
    off = tuple(float(np.quantile(scores[:, c], 0.5)) for c in range(len(CLASS_NAMES)))
    return PostProcessing(on, off, median_frames=3, min_length=0.5, min_gap=0.5)


def pcm_bytes(path) -> bytes:
    samples, _ = soundfile.read(path, dtype="int16")
    return samples.astype("<i2").tobytes()


def test_a_stream_gives_the_events_detect_finds_in_the_file(spec, recording, one_torch_thread):
    _, model = spec
    first = detect_files([recording], model, PostProcessing.uniform(0.5, 0.3), hop_seconds=0.5).files[0]
    rules = thresholds_with_events(first.frame_scores)
    expected = detect_files([recording], model, rules, hop_seconds=0.5).files[0]
    assert len(expected.events) >= 3
    scored: list[np.ndarray] = []
    detector = StreamDetector(model, rules, 0.5, (1, 2), batch_size=8, on_frame=lambda k, row: scored.append(row))
    events = []
    stream = io.BytesIO(pcm_bytes(recording))
    for block in read_pcm(stream, "s16le", 1, 1237, detector.stats):   # blocks that do not line up with hops
        events.extend(detector.feed(block))
    events.extend(detector.finish())
    np.testing.assert_allclose(np.stack(scored), expected.frame_scores, atol=1e-5)
    assert sorted(events, key=lambda e: (e.onset, e.label)) == expected.events


def test_a_stream_cut_inside_a_sample_frame_ends_cleanly_with_open_events_flushed():
    stats = StreamStats()
    samples = np.full(3 * RATE, 1000, dtype="<i2").tobytes() + b"\x07"   # 3 s and half a 16-bit sample
    blocks = list(read_pcm(io.BytesIO(samples), "s16le", 1, 4000, stats))
    assert sum(len(b) for b in blocks) == 3 * RATE and stats.trailing_bytes == 1

    def always_siren(windows, salience_values):
        out = np.zeros((len(windows), len(CLASS_NAMES)), dtype=np.float32)
        out[:, CLASS_NAMES.index("siren")] = 1.0
        return out

    detector = StreamDetector(ModelSpec(RATE, 4 * RATE, always_siren, False, "stub"),
                              PostProcessing.uniform(0.5, 0.5), 0.5, ())
    during = [event for block in blocks for event in detector.feed(block)]
    assert during == []                                   # the siren never ended before the stream did
    flushed = detector.finish()
    assert [(e.onset, e.offset, e.label) for e in flushed] == [(0.0, 3.0, "siren")]


class LiveProducer(io.RawIOBase):
    """A pipe whose producer writes `piece` bytes at a time: read1 returns what is there, read waits for more."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece, self.position = data, piece, 0

    def read1(self, size: int = -1) -> bytes:
        chunk = self.data[self.position:self.position + min(size, self.piece)]
        self.position += len(chunk)
        return chunk

    def read(self, size: int = -1) -> bytes:
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        return chunk


def test_a_live_stream_is_read_as_it_comes_and_a_stream_ahead_in_whole_blocks():
    samples = np.arange(10_000, dtype="<i2")
    live = list(read_pcm(LiveProducer(samples.tobytes(), 601), "s16le", 1, 4000, StreamStats()))
    assert max(len(b) for b in live) <= 301                  # never waits to fill a 4000-sample block
    np.testing.assert_array_equal(np.concatenate(live) * 32768, samples)  # a split sample joins its next piece
    ahead = list(read_pcm(io.BufferedReader(io.BytesIO(samples.tobytes())), "s16le", 1, 4000, StreamStats()))
    assert [len(b) for b in ahead] == [4000, 4000, 2000]


class BlockRecorder:
    """monitor's detector as run_pipe sees it, recording the size of each block it is fed."""

    def __init__(self, hop: int, batch_size: int) -> None:
        self.grid, self.batch_size, self.stats, self.blocks = FrameGrid(4 * hop, hop), batch_size, StreamStats(), []

    def feed(self, block: np.ndarray) -> list:
        self.blocks.append(len(block))
        return []


def test_monitor_reads_a_pipe_that_is_ahead_in_whole_batches():
    """A real pipe (not an in-memory stream): a read gets what the pipe holds, 64 KiB on Linux unless widened;
    run_pipe widens it to a batch of hops (here 16 x 5000 s16 frames: 160000 bytes)."""
    from core.commands.monitor import run_pipe

    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("pipe capacity cannot be set here (not Linux)")
    read_end, write_end = os.pipe()
    os.close(write_end)                                              # an empty stream: only the widening shows
    with os.fdopen(read_end, "rb") as reader:
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) < 160_000
        run_pipe(BlockRecorder(5000, 16), reader, "s16le", 1)
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) >= 160_000

    read_end, write_end = os.pipe()
    samples = (np.arange(100_000) % 20_000).astype("<i2")
    detector = BlockRecorder(5000, 16)

    def produce() -> None:
        with os.fdopen(write_end, "wb") as writer:
            writer.write(samples.tobytes())

    with os.fdopen(read_end, "rb") as reader:
        assert widen_pipe(reader, 160_000) >= 160_000               # as run_pipe does, before the producer writes
        producer = threading.Thread(target=produce)
        producer.start()
        producer.join(timeout=10)                                    # it fits: the producer gets ahead of us
        finished = not producer.is_alive()
        run_pipe(detector, reader, "s16le", 1)
        producer.join()
    assert finished, "the widened pipe did not hold the producer's 200000 bytes"
    assert detector.blocks == [80_000, 20_000]                       # unwidened: 32768-frame reads
    assert widen_pipe(io.BytesIO(b""), 80_000) == 0                  # not a pipe: left alone


def test_stereo_f32_is_averaged_to_mono():
    stats = StreamStats()
    frames = np.array([[0.5, -0.5], [0.25, 0.75]], dtype="<f4").tobytes()
    (block,) = list(read_pcm(io.BytesIO(frames), "f32le", 2, 10, stats))
    np.testing.assert_allclose(block, [0.0, 0.5])


@pytest.mark.slow
def test_monitor_on_stdin_prints_the_events_detect_writes(spec, recording, tmp_path):
    root, model = spec
    first = detect_files([recording], model, PostProcessing.uniform(0.5, 0.3), hop_seconds=0.5).files[0]
    rules = thresholds_with_events(first.frame_scores)
    table = tmp_path / "thresholds.csv"
    table.write_text("event_label,on,off\n" + "".join(f"{n},{rules.on[c]!r},{rules.off[c]!r}\n"
                                                    for c, n in enumerate(CLASS_NAMES)))
    common = ["--solution", BASELINE, "--solutions", str(root), "--thresholds", str(table), "--device", "cpu"]
    env = subprocess_env(OMP_NUM_THREADS="1")
    detected = subprocess.run([sys.executable, "-m", "core", "detect", str(recording), *common, "--json"],
                              capture_output=True, text=True, env=env, cwd=REPO)
    assert detected.returncode == 0, detected.stderr
    expected = json.loads(detected.stdout)["files"][0]["events"]
    streamed = subprocess.run([sys.executable, "-m", "core", "monitor", "--input", "-", "--rate", str(RATE), *common],
                              input=pcm_bytes(recording) + b"\x01", capture_output=True, env=env, cwd=REPO)
    assert streamed.returncode == 0, streamed.stderr.decode()
    lines = [json.loads(line) for line in streamed.stdout.decode().splitlines()]
    assert sorted(lines, key=lambda e: (e["onset"], e["event_label"])) == expected and expected
    assert "ignored" in streamed.stderr.decode()   # the half sample at the end is reported


# --- --input mic where PortAudio or a device is missing: one line, exit 2 ----------------------------------

def run_monitor(*args: str) -> tuple[int, str]:
    """`python -m core monitor ARGS` in this process: exit code and stderr."""
    import contextlib
    from unittest import mock

    from core.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["core", "monitor", *args]), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main()
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
    return code, stderr.getvalue()


def fake_sounddevice(query_error: Exception | None = None, stream_error: Exception | None = None):
    """A stand-in sounddevice module whose device query and/or InputStream raise like PortAudio does."""
    import types

    module = types.ModuleType("sounddevice")

    def query_devices(kind=None):
        if query_error is not None:
            raise query_error
        return {"name": "fake", "max_input_channels": 1}

    def input_stream(**_):
        raise stream_error

    module.query_devices, module.InputStream = query_devices, input_stream
    return module


def assert_one_line_refusal(code: int, stderr: str, *words: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert "Traceback" not in stderr and errors == lines[-1:], stderr     # one error line, the last one
    for word in words:
        assert word in errors[0], stderr


def test_mic_without_sounddevice_or_portaudio_is_one_line_and_exit_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)            # `import sounddevice` raises ImportError
    code, stderr = run_monitor("--input", "mic", "--solution", "never-loaded")
    assert_one_line_refusal(code, stderr, "sounddevice", "PortAudio", "--input -")


def test_mic_without_an_input_device_is_one_line_and_exit_2(monkeypatch):
    error = RuntimeError("Error querying device -1\n(PortAudio: no default input)")   # a two-line message
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(query_error=error))
    code, stderr = run_monitor("--input", "mic", "--solution", "never-loaded")
    assert_one_line_refusal(code, stderr, "no input device", "Error querying device -1 (PortAudio")


def test_mic_that_refuses_the_stream_is_one_line_and_exit_2(monkeypatch, spec):
    root, _ = spec
    monkeypatch.setitem(sys.modules, "sounddevice",
                        fake_sounddevice(stream_error=RuntimeError("Invalid sample rate [PaErrorCode -9997]")))
    code, stderr = run_monitor("--input", "mic", "--solution", BASELINE, "--solutions", str(root), "--rate",
                               str(RATE), "--device", "cpu")
    assert_one_line_refusal(code, stderr, f"at {RATE} Hz", "Invalid sample rate")
