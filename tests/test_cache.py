"""The waveform cache: same data as the loader, reused without decoding, rebuilt whenever it is not exact."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

import core.data.cache as cache_module
from core.data.audio import load_clip
from core.data.cache import BadAudioError, WaveformCache, load_waveforms

RATE = 16000
LENGTH = 8000  # 0.5 s keeps the tests fast; the code path is the same as for 4 s at 32 kHz
FORMATS = [(22050, 1, "PCM_16"), (44100, 2, "PCM_24"), (16000, 1, "FLOAT"), (8000, 2, "PCM_16"), (48000, 1, "PCM_U8")]


def write_clips(folder: Path, count: int = 5, seconds: float = 0.7, seed: int = 0) -> list[str]:
    """`count` noise clips in mixed formats; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        rate, channels, subtype = FORMATS[index % len(FORMATS)]
        path = folder / f"clip{index}.wav"
        signal = rng.uniform(-0.5, 0.5, size=(int(rate * seconds), channels)).astype(np.float32)
        soundfile.write(path, signal, rate, subtype=subtype)
        paths.append(str(path))
    return paths


def decoded(paths: list[str]) -> np.ndarray:
    """What the cache should hold: the loader's output, rounded to float16."""
    return np.stack([load_clip(Path(path), RATE, LENGTH) for path in paths]).astype(np.float16)


class CountingDecoder:
    """Stands in for load_clip inside the cache; counts calls (and can refuse to decode at all)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, path, sample_rate, num_samples):
        self.calls += 1
        if self.fail:
            raise AssertionError(f"the cache decoded {path} again instead of reusing the cached array")
        return load_clip(path, sample_rate, num_samples)


def load(paths, cache_dir, **kwargs) -> WaveformCache:
    return load_waveforms(paths, RATE, LENGTH, cache_dir=cache_dir, progress=False, workers=1, **kwargs)


def cache_files(cache_dir: Path) -> tuple[Path, Path]:
    (array,) = cache_dir.glob("*.f16")
    (manifest,) = cache_dir.glob("*.json")
    return array, manifest


def test_holds_the_decoded_clips_in_order(tmp_path):
    paths = write_clips(tmp_path / "audio")
    cache = load(paths, tmp_path / "cache")
    assert isinstance(cache.waveforms, np.memmap)
    assert cache.waveforms.dtype == np.float16 and cache.waveforms.shape == (len(paths), LENGTH)
    assert cache.paths == paths and cache.bad == {}
    assert np.array_equal(np.asarray(cache.waveforms), decoded(paths))
    manifest = json.loads(cache_files(tmp_path / "cache")[1].read_text())
    assert manifest["shape"] == [len(paths), LENGTH] and manifest["dtype"] == "float16"
    assert manifest["bytes"] == len(paths) * LENGTH * 2 == cache_files(tmp_path / "cache")[0].stat().st_size


def test_second_call_reuses_the_cache_without_decoding(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    first = np.asarray(load(paths, tmp_path / "cache").waveforms).copy()
    monkeypatch.setattr(cache_module, "load_clip", CountingDecoder(fail=True))
    again = load(paths, tmp_path / "cache")
    assert np.array_equal(np.asarray(again.waveforms), first)


def test_other_settings_get_their_own_cache(tmp_path):
    paths = write_clips(tmp_path / "audio")
    load(paths, tmp_path / "cache")
    other = load_waveforms(paths, 8000, 4000, cache_dir=tmp_path / "cache", progress=False, workers=1)
    assert other.waveforms.shape == (len(paths), 4000)
    assert len(list((tmp_path / "cache").glob("*.f16"))) == 2
    subset = load(paths[:2], tmp_path / "cache")
    assert np.array_equal(np.asarray(subset.waveforms), decoded(paths[:2]))


def _rebuilds(paths, cache_dir, monkeypatch) -> int:
    decoder = CountingDecoder()
    monkeypatch.setattr(cache_module, "load_clip", decoder)
    cache = load(paths, cache_dir)
    assert np.array_equal(np.asarray(cache.waveforms), decoded(paths))
    return decoder.calls


def test_truncated_array_is_rebuilt(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    load(paths, tmp_path / "cache")
    array, _ = cache_files(tmp_path / "cache")
    with open(array, "r+b") as handle:
        handle.truncate(array.stat().st_size // 2)
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)


def test_changed_audio_file_makes_the_cache_stale(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    before = np.asarray(load(paths, tmp_path / "cache").waveforms).copy()
    soundfile.write(paths[2], np.full((RATE // 2, 1), 0.25, dtype=np.float32), 16000, subtype="FLOAT")
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # even on coarse-mtime file systems
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)
    after = np.asarray(load(paths, tmp_path / "cache").waveforms)
    assert np.array_equal(after[[0, 1, 3, 4]], before[[0, 1, 3, 4]])
    assert np.allclose(after[2, : LENGTH // 2 - 100], 0.25)


def test_missing_manifest_is_rebuilt(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    load(paths, tmp_path / "cache")
    cache_files(tmp_path / "cache")[1].unlink()
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)


def test_modified_array_content_is_rebuilt(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    load(paths, tmp_path / "cache")
    array, _ = cache_files(tmp_path / "cache")
    with open(array, "r+b") as handle:  # same size, different bytes in the first row
        handle.write(b"\x00" * 64)
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)


def test_manifest_from_another_version_is_rebuilt(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    load(paths, tmp_path / "cache")
    _, manifest_path = cache_files(tmp_path / "cache")
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = 0
    manifest_path.write_text(json.dumps(manifest))
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")

    def interrupted(path, sample_rate, num_samples):
        if path.name == "clip3.wav":
            raise KeyboardInterrupt
        return load_clip(path, sample_rate, num_samples)

    monkeypatch.setattr(cache_module, "load_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(paths, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.json")) and not list((tmp_path / "cache").glob("*.f16"))
    assert not list((tmp_path / "cache").glob(".*.tmp"))
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)


def test_bad_files_are_all_listed_in_one_error(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio")
    empty, corrupt, nonfinite = (tmp_path / "audio" / name for name in ("empty.wav", "corrupt.wav", "nan.wav"))
    soundfile.write(empty, np.zeros((0, 1), dtype=np.float32), RATE)
    corrupt.write_bytes(b"RIFF....WAVEjunk")
    soundfile.write(nonfinite, np.full(100, np.nan, dtype=np.float32), RATE, subtype="FLOAT")
    all_paths = [paths[0], str(empty), paths[1], str(corrupt), str(nonfinite)]
    with pytest.raises(BadAudioError) as caught:
        load(all_paths, tmp_path / "cache")
    message = str(caught.value)
    assert set(caught.value.bad) == {str(empty), str(corrupt), str(nonfinite)}
    for path, reason in ((empty, "empty file"), (corrupt, "corrupt header"), (nonfinite, "non-finite")):
        assert f"{path}: {reason}" in message
    assert "--skip-bad-audio" in message
    # the decoded result is cached with its bad list: skipping needs no second decode
    monkeypatch.setattr(cache_module, "load_clip", CountingDecoder(fail=True))
    skipped = load(all_paths, tmp_path / "cache", skip_bad=True)
    assert set(skipped.bad) == {str(empty), str(corrupt), str(nonfinite)}
    assert "empty file" in skipped.bad[str(empty)]
    rows = np.asarray(skipped.waveforms)
    assert not rows[[1, 3, 4]].any()  # placeholders the caller must drop
    assert np.array_equal(rows[[0, 2]], decoded([paths[0], paths[1]]))
    with pytest.raises(BadAudioError):
        load(all_paths, tmp_path / "cache")


def test_float_audio_beyond_float16_range_is_clipped_not_inf(tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(path, np.array([3.0, 1e5, -1e5, 0.5], dtype=np.float32), RATE, subtype="FLOAT")
    cache = load_waveforms([path], RATE, 4, cache_dir=tmp_path / "cache", progress=False)
    assert np.asarray(cache.waveforms[0]).tolist() == [3.0, 65504.0, -65504.0, 0.5]


def test_worker_processes_give_the_same_rows(tmp_path):
    paths = write_clips(tmp_path / "audio", count=12)
    single = load(paths, tmp_path / "single")
    pooled = load_waveforms(paths, RATE, LENGTH, cache_dir=tmp_path / "pooled", progress=False, workers=2)
    assert np.array_equal(np.asarray(single.waveforms), np.asarray(pooled.waveforms))


def test_cache_folder_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("US8K_CACHE_DIR", str(tmp_path / "from-env"))
    paths = write_clips(tmp_path / "audio", count=2)
    load_waveforms(paths, RATE, LENGTH, progress=False)
    assert len(list((tmp_path / "from-env").glob("*.f16"))) == 1


def test_default_cache_folder_is_the_repo_cache(monkeypatch):
    monkeypatch.delenv("US8K_CACHE_DIR", raising=False)
    assert cache_module.default_cache_dir() == Path(__file__).resolve().parents[1] / "cache"


def test_empty_path_list(tmp_path):
    cache = load([], tmp_path / "cache")
    assert cache.waveforms.shape == (0, LENGTH) and cache.paths == [] and cache.bad == {}


def _build_in_child(paths: list[str], cache_dir: Path, barrier, result_path: Path) -> None:
    """One builder of the concurrent test: its decoder waits until the other builder is decoding too."""
    def decoder(path, sample_rate, num_samples):
        if Path(path).name == "clip0.wav":
            barrier.wait(timeout=60)  # both builders are mid-build at once, or this raises
        return load_clip(path, sample_rate, num_samples)

    cache_module.load_clip = decoder
    cache = load(paths, cache_dir)
    np.save(result_path, np.asarray(cache.waveforms))


def test_two_builders_without_a_shared_lock_publish_one_valid_entry(tmp_path, monkeypatch):
    import contextlib
    import multiprocessing

    paths = write_clips(tmp_path / "audio")
    # machines on NFS do not share flock: each builder runs as if it held the only lock
    monkeypatch.setattr(cache_module, "exclusive_lock", lambda _path: contextlib.nullcontext())
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    builders = [context.Process(target=_build_in_child, args=(paths, tmp_path / "cache", barrier,
                                                              tmp_path / f"rows{index}.npy")) for index in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(timeout=120)
    assert [builder.exitcode for builder in builders] == [0, 0]
    for index in range(2):
        assert np.array_equal(np.load(tmp_path / f"rows{index}.npy"), decoded(paths))
    assert sorted(path.suffix for path in (tmp_path / "cache").iterdir() if path.suffix != ".lock") == [".f16", ".json"]
    monkeypatch.setattr(cache_module, "load_clip", CountingDecoder(fail=True))  # the entry verifies: no rebuild
    assert np.array_equal(np.asarray(load(paths, tmp_path / "cache").waveforms), decoded(paths))


def test_one_flipped_byte_anywhere_fails_the_checksum_and_is_rebuilt(tmp_path, monkeypatch):
    paths = write_clips(tmp_path / "audio", count=40)
    load(paths, tmp_path / "cache")
    array, _ = cache_files(tmp_path / "cache")
    entry = cache_module.CacheEntry.for_files(tmp_path / "cache", paths, RATE, LENGTH)
    assert entry.open_verified()[0] is not None
    with open(array, "r+b") as handle:  # one sample in a middle row: size unchanged
        handle.seek(23 * LENGTH * 2 + 1001)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    assert entry.open_verified()[2].startswith("checksum mismatch")
    assert _rebuilds(paths, tmp_path / "cache", monkeypatch) == len(paths)


def test_a_builder_removes_only_temporaries_of_killed_builds(tmp_path):
    import subprocess
    import sys

    paths = write_clips(tmp_path / "audio", count=2)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    entry = cache_module.CacheEntry.for_files(cache_dir, paths, RATE, LENGTH)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(finished.stdout), cache_module._host()

    def temporary(host_name: str, pid: int) -> Path:
        path = entry.array_path.with_name(f".{entry.array_path.name}.{host_name}.{pid}.{os.urandom(4).hex()}.tmp")
        path.write_bytes(b"in progress")
        return path

    elsewhere_live = temporary("otherhost", dead_pid)      # another machine's pid means nothing here: kept
    elsewhere_old = temporary("otherhost", 456)            # untouched for over STALE_TEMP_SECONDS: removed
    old = os.stat(elsewhere_old).st_mtime - cache_module.STALE_TEMP_SECONDS - 60
    os.utime(elsewhere_old, (old, old))
    here_live = temporary(host, os.getppid())              # a running process on this host: kept
    here_dead = temporary(host, dead_pid)                  # its process is gone: removed
    mine = entry.temporary_array_path()
    assert mine != entry.temporary_array_path() and mine.name.startswith(f".{entry.array_path.name}.{host}.")
    load(paths, cache_dir)
    assert elsewhere_live.exists() and here_live.exists()
    assert not elsewhere_old.exists() and not here_dead.exists()


def test_a_file_system_without_locks_still_builds_and_reuses_the_entry(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # NFS mounted without a lock daemon
    paths = write_clips(tmp_path / "audio", count=3)
    assert np.array_equal(np.asarray(load(paths, tmp_path / "cache").waveforms), decoded(paths))
    monkeypatch.setattr(cache_module, "load_clip", CountingDecoder(fail=True))  # verified, not rebuilt
    assert np.array_equal(np.asarray(load(paths, tmp_path / "cache").waveforms), decoded(paths))

    def broken(fd, operation):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", broken)  # any other failure is not taken for "no locks here"
    with pytest.raises(OSError, match="Bad file descriptor"):
        load(paths, tmp_path / "cache")
