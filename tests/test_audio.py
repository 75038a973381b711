"""The audio loader against the reference pipeline (torchaudio resample per channel, then channel mean)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as audio_functional

from core.data.audio import AudioError, load_clip

RATE = 32000
LENGTH = 128000


def reference_clip(path, sample_rate: int = RATE, num_samples: int = LENGTH) -> np.ndarray:
    """The reference scripts' loading, written out independently: resample each channel, average, pad/crop."""
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(samples.T.copy())                     # [channels, L], like torchaudio.load
    if rate != sample_rate:
        waveform = audio_functional.resample(waveform, rate, sample_rate)
    waveform = waveform.mean(dim=0, keepdim=True)
    length = waveform.shape[1]
    if length < num_samples:
        waveform = torch.nn.functional.pad(waveform, (0, num_samples - length))
    elif length > num_samples:
        start = (length - num_samples) // 2
        waveform = waveform[:, start:start + num_samples]
    return waveform[0].numpy()


def chirp_signal(rate: int, seconds: float, channels: int, seed: int = 0) -> np.ndarray:
    """A chirp plus noise per channel, within [-0.9, 0.9]."""
    rng = np.random.default_rng(seed)
    time = np.arange(int(round(rate * seconds))) / rate
    columns = [0.5 * np.sin(2 * np.pi * (200 + 900 * channel + 300 * time) * time) + 0.1 * rng.standard_normal(time.size)
               for channel in range(channels)]
    return np.clip(np.stack(columns, axis=1), -0.9, 0.9).astype(np.float32)


@pytest.mark.parametrize("rate, seconds, channels, subtype", [
    (44100, 4.0, 2, "PCM_16"),   # stereo, downsampled
    (48000, 3.0, 1, "PCM_24"),   # 24-bit
    (8000, 4.0, 1, "PCM_16"),    # upsampled 4x
    (22050, 0.1, 2, "PCM_16"),   # very short: padded
    (11025, 2.0, 1, "PCM_U8"),   # 8-bit unsigned
    (96000, 4.5, 3, "FLOAT"),    # float32, three channels, cropped
    (32000, 2.5, 1, "PCM_32"),   # no resampling
])
def test_matches_reference_pipeline(tmp_path, rate, seconds, channels, subtype):
    path = tmp_path / f"clip_{subtype}.wav"
    soundfile.write(path, chirp_signal(rate, seconds, channels), rate, subtype=subtype)
    assert soundfile.info(path).subtype == subtype
    clip = load_clip(path, RATE, LENGTH)
    assert clip.dtype == np.float32 and clip.shape == (LENGTH,)
    expected = reference_clip(path)
    np.testing.assert_allclose(clip, expected, atol=2e-6, rtol=0)
    assert np.abs(clip).max() > 0.1  # a real signal, not silence that trivially matches


def test_24_bit_keeps_its_precision(tmp_path):
    signal = chirp_signal(RATE, 1.0, 1)[:, 0]
    path = tmp_path / "fine.wav"
    soundfile.write(path, signal, RATE, subtype="PCM_24")
    clip = load_clip(path, RATE, RATE)
    assert np.max(np.abs(clip - signal)) <= 2.0 ** -23  # 16-bit would be off by up to 2^-16


def test_unsigned_8_bit_silence_is_zero(tmp_path):
    path = tmp_path / "u8.wav"
    soundfile.write(path, np.zeros(800, dtype=np.float32), 8000, subtype="PCM_U8")
    with open(path, "rb") as handle:
        assert set(handle.read()[-800:]) == {128}  # unsigned: silence is stored as 128
    assert np.array_equal(load_clip(path, 8000, 1000), np.zeros(1000, dtype=np.float32))


def test_short_clip_is_right_padded_with_zeros(tmp_path):
    signal = np.linspace(0.1, 0.5, 3200, dtype=np.float32)  # 0.1 s at the target rate: no resampling
    path = tmp_path / "short.wav"
    soundfile.write(path, signal, RATE, subtype="FLOAT")
    clip = load_clip(path, RATE, LENGTH)
    assert np.array_equal(clip[:3200], signal)
    assert not clip[3200:].any()


@pytest.mark.parametrize("length", [5 * RATE, LENGTH + 3])
def test_long_clip_is_centre_cropped(tmp_path, length):
    ramp = (np.arange(length) / length).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, ramp, RATE, subtype="FLOAT")
    start = (length - LENGTH) // 2  # 16000 for 5 s; 1 (integer division) for 3 extra samples
    assert np.array_equal(load_clip(path, RATE, LENGTH), ramp[start:start + LENGTH])


def test_float_audio_above_full_scale_is_kept(tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(path, np.full(100, 3.0, dtype=np.float32), RATE, subtype="FLOAT")
    assert np.array_equal(load_clip(path, RATE, 100), np.full(100, 3.0, dtype=np.float32))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros((0, 1), dtype=np.float32), RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty file"):
        load_clip(path, RATE, LENGTH)


def test_corrupt_header_is_an_error(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(AudioError, match="corrupt header"):
        load_clip(path, RATE, LENGTH)


def test_zero_byte_file_is_an_error(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="corrupt header"):
        load_clip(path, RATE, LENGTH)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_an_error(tmp_path, bad_value):
    signal = np.full(1000, 0.25, dtype=np.float32)
    signal[500] = bad_value
    path = tmp_path / "nonfinite.wav"
    soundfile.write(path, signal, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite samples"):
        load_clip(path, RATE, LENGTH)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        load_clip(tmp_path / "absent.wav", RATE, LENGTH)
