"""The waveform cache: decode + resample every clip once into a float16 array on disk (memory-mapped).

One cache entry per (file list, sample rate, length); it is reused by every fold, epoch, later run
and solution with the same audio settings. Its manifest records a key over the file list with each
file's size and mtime, the array shape, dtype, exact byte size and a CRC32 of the whole array; an
entry whose manifest is missing or disagrees with any of them is rebuilt, never read.

Safe in a folder shared by machines whose locks are not shared (NFS): the lock only saves duplicate
work on one machine; correctness rests on the files alone. Each builder decodes into its own
temporary (`.<array>.<host>.<pid>.<random>.tmp`), fsyncs it and publishes it by an atomic rename,
then publishes the manifest the same way; a reader verifies size and checksum before use, so a
manifest that meets another builder's array is seen as stale and rebuilt. A builder deletes its own
temporary, and another's only when it surely belongs to a killed build: written on this host by a
process that no longer exists, or untouched for STALE_TEMP_SECONDS (any host).

Location: `cache_dir` argument (`--cache-dir`), else $US8K_CACHE_DIR, else <repo>/cache/ (git-ignored).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.atomic import NO_LOCK_ERRNOS, exclusive_lock, write_json
from core.data.audio import AudioError, load_clip
from core.errors import UserError, format_problems
from core.progress import progress_bar

if TYPE_CHECKING:
    import multiprocessing.pool

    from rich.console import Console

CACHE_ENV = "US8K_CACHE_DIR"
FORMAT_VERSION = 2         # 2: the manifest's checksum covers the whole array
DTYPE = np.dtype(np.float16)
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504; louder float audio is clipped rather than stored as inf
CHECKSUM_CHUNK_BYTES = 64 * 2 ** 20  # the array is checksummed in slices of this size (bounded memory)
STALE_TEMP_SECONDS = 24 * 3600  # another builder's temporary untouched this long belongs to a killed build
BUILD_ATTEMPTS = 3         # builds per call before concurrent builders that disagree become an error
MIN_FILES_FOR_POOL = 256    # below this, worker start-up costs more than it saves (auto workers only)


@dataclass
class WaveformCache:
    """Decoded clips: row i of `waveforms` belongs to `paths[i]`."""

    waveforms: np.ndarray       # np.memmap float16 [len(paths), num_samples] (read-only)
    paths: list[str]
    bad: dict[str, str]         # path -> reason; only with skip_bad=True; those rows hold zeros: drop them


class BadAudioError(UserError):
    """Some clips cannot be used; `bad` maps each path to its reason (all are listed in the message)."""

    def __init__(self, bad: dict[str, str]) -> None:
        problems = [f"{path}: {reason}" for path, reason in bad.items()]
        message = format_problems(f"{len(bad)} audio file(s) cannot be used (nothing was trained):", problems)
        super().__init__(message + "\nFix or remove these files (and their metadata rows), "
                                   "or pass --skip-bad-audio to drop them.")
        self.bad = dict(bad)


def default_cache_dir() -> Path:
    """$US8K_CACHE_DIR if set, else <repo>/cache/."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "cache"


def load_waveforms(paths: Sequence[str | Path], sample_rate: int, num_samples: int, *,
                   cache_dir: Path | None = None, skip_bad: bool = False, progress: bool = True,
                   workers: int | None = None, console: Console | None = None) -> WaveformCache:
    """The clips at `paths` as a float16 memmap [N, num_samples], from the cache or decoded once into it.

    Bad clips (unreadable, empty, non-finite) raise one BadAudioError listing all of them, unless
    `skip_bad`: then they are returned in `bad` (their rows are zeros and must be dropped).
    `workers`: decoding processes (None: the number of cores, or 1 for small lists); rows are
    deterministic whatever the number. `console`: the rich Console to draw the progress bar on; pass the
    one of a live display already running (e.g. the trainer's bars) so the bar nests inside it.
    """
    path_strings = [str(path) for path in paths]
    if sample_rate <= 0 or num_samples <= 0:
        raise ValueError(f"sample_rate and num_samples must be positive, got {sample_rate}, {num_samples}")
    if not path_strings:
        return WaveformCache(np.zeros((0, num_samples), dtype=DTYPE), [], {})
    folder = _usable_folder(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    entry = CacheEntry.for_files(folder, path_strings, sample_rate, num_samples)
    with _builder_lock(entry.lock_path):  # saves duplicate work on this machine; not needed for correctness
        waveforms, bad = _open_or_build(entry, path_strings, progress=progress, workers=workers, console=console)
    if bad and not skip_bad:
        raise BadAudioError(bad)
    return WaveformCache(waveforms, path_strings, bad)


@contextlib.contextmanager
def _builder_lock(lock_path: Path) -> Iterator[None]:
    """This machine's lock on a cache entry. Where the file system offers no locks at all (NFS without a
    lock daemon: ENOLCK), go on without it: correctness rests on the files (own temporaries, checksum)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock_path))
        except OSError as error:
            if error.errno not in NO_LOCK_ERRNOS:
                raise
        yield


def _open_or_build(entry: CacheEntry, paths: list[str], *, progress: bool, workers: int | None,
                   console: Console | None) -> tuple[np.memmap, dict[str, str]]:
    """The verified entry, built (again) until it verifies; a builder elsewhere may publish meanwhile."""
    waveforms, bad, stale_reason = entry.open_verified()
    for _ in range(BUILD_ATTEMPTS):
        if waveforms is not None:
            return waveforms, bad
        console = console or _stderr_console()
        if progress and stale_reason != "no cache yet":
            console.print(f"audio cache {entry.array_path.name}: {stale_reason}; rebuilding")
        started = time.perf_counter()
        entry.build(paths, progress=console if progress else None, workers=workers)
        if progress:
            console.print(f"audio cache: decoded {len(paths)} clips in {time.perf_counter() - started:.0f} s "
                          f"into {entry.array_path} ({entry.nbytes / 1e9:.2f} GB)", highlight=False)
        waveforms, bad, stale_reason = entry.open_verified()
    if waveforms is not None:
        return waveforms, bad
    raise UserError(f"the audio cache {entry.array_path} fails verification after {BUILD_ATTEMPTS} builds "
                    f"({stale_reason}): other processes keep replacing it with different audio (files changing "
                    f"while several machines build?). Stop the other runs or give this one its own --cache-dir.")


@dataclass(frozen=True)
class CacheEntry:
    """Where one cache lives and the key it must match."""

    array_path: Path
    manifest_path: Path
    lock_path: Path
    key: str
    shape: tuple[int, int]
    sample_rate: int

    @classmethod
    def for_files(cls, folder: Path, paths: list[str], sample_rate: int, num_samples: int) -> CacheEntry:
        """The entry for this file list: named by (absolute paths, rate, length), keyed also by sizes and mtimes."""
        absolute = [os.path.abspath(path) for path in paths]
        identity = _digest({"format": FORMAT_VERSION, "paths": absolute, "sample_rate": sample_rate,
                            "num_samples": num_samples})
        stamps = [_file_stamp(path) for path in absolute]
        key = _digest({"identity": identity, "stamps": stamps})
        stem = f"waveforms-{sample_rate}hz-{num_samples}-{identity[:20]}"
        return cls(folder / f"{stem}.f16", folder / f"{stem}.json", folder / f"{stem}.lock", key,
                   (len(paths), num_samples), sample_rate)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * DTYPE.itemsize

    def open_verified(self) -> tuple[np.memmap | None, dict[str, str], str]:
        """(memmap, bad, "") when the cache on disk matches this entry exactly, else (None, {}, why not)."""
        if not self.manifest_path.is_file():
            return None, {}, "no cache yet" if not self.array_path.exists() else "manifest missing"
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            return None, {}, f"manifest unreadable ({error})"
        expected = {"format": FORMAT_VERSION, "key": self.key, "shape": list(self.shape),
                    "dtype": DTYPE.name, "bytes": self.nbytes}
        for field, value in expected.items():
            if manifest.get(field) != value:
                return None, {}, f"stale ({field} differs: audio files changed or cache from another version)"
        if not self.array_path.is_file() or self.array_path.stat().st_size != self.nbytes:
            return None, {}, "array missing or truncated"
        waveforms = np.memmap(self.array_path, dtype=DTYPE, mode="r", shape=self.shape)
        if _checksum(waveforms) != manifest.get("crc32"):
            return None, {}, "checksum mismatch (array modified, or published by another builder)"
        return waveforms, dict(manifest.get("bad", {})), ""

    def stale_temporaries(self, now: float | None = None) -> list[Path]:
        """Temporaries of this entry left by killed builds: a dead process's on this host, or any untouched
        for STALE_TEMP_SECONDS. A live build's temporary, here or on another machine, is never listed."""
        now = time.time() if now is None else now
        stale = []
        for candidate in [*self.array_path.parent.glob(f".{self.array_path.name}.*.tmp"),
                          *self.manifest_path.parent.glob(f".{self.manifest_path.name}.*.tmp")]:
            with contextlib.suppress(FileNotFoundError):
                if _dead_builder_here(candidate, self.array_path.name) or (
                        now - candidate.stat().st_mtime > STALE_TEMP_SECONDS):
                    stale.append(candidate)
        return stale

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete this entry's stale temporaries; a live build on another machine keeps its own."""
        removed = self.stale_temporaries()
        for leftover in removed:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        return removed

    def temporary_array_path(self) -> Path:
        """A temporary name no other builder, on this machine or another, can choose."""
        return self.array_path.with_name(f".{self.array_path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")

    def build(self, paths: list[str], *, progress: Console | None, workers: int | None) -> dict[str, str]:
        """Decode every clip into this builder's own temp array, fsync, rename, then write the manifest.

        Returns the bad clips. The old manifest may stay until the new one replaces it: it no longer
        matches the new array's checksum, so nothing reads the pair meanwhile. `progress`: the console
        for a progress bar, None for none.
        """
        self.remove_stale_temporaries()
        temp_path = self.temporary_array_path()
        try:
            _allocate(temp_path, self.nbytes)
            reasons = _decode_all(temp_path, paths, self.shape, self.sample_rate, progress=progress,
                                  workers=resolve_workers(workers, len(paths)))
            _fsync(temp_path)
            checksum = _checksum(np.memmap(temp_path, dtype=DTYPE, mode="r", shape=self.shape))
            os.replace(temp_path, self.array_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp_path.unlink()  # only our own: another builder's temporary is its business
        bad = {paths[row]: reason for row, reason in sorted(reasons.items())}
        write_json({"format": FORMAT_VERSION, "key": self.key, "shape": list(self.shape), "dtype": DTYPE.name,
                    "bytes": self.nbytes, "crc32": checksum, "sample_rate": self.sample_rate,
                    "num_samples": self.shape[1], "bad": bad}, self.manifest_path)
        return bad


# ---------------------------------------------------------------------------------------- decoding

def decode_rows(array_path: Path, shape: tuple[int, int], sample_rate: int,
                items: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Decode (row, path) items into the float16 array file at `array_path`; return (row, reason) of bad clips.

    Runs in worker processes too; each row is written by exactly one call, so rows never depend on scheduling.
    """
    waveforms = np.memmap(array_path, dtype=DTYPE, mode="r+", shape=shape)
    bad: list[tuple[int, str]] = []
    for row, path in items:
        try:
            clip = load_clip(Path(path), sample_rate, shape[1])
        except AudioError as error:
            bad.append((row, str(error)))
            continue
        waveforms[row] = np.clip(clip, -FLOAT16_MAX, FLOAT16_MAX).astype(DTYPE)
    waveforms.flush()
    del waveforms
    return bad


def _decode_all(array_path: Path, paths: list[str], shape: tuple[int, int], sample_rate: int, *,
                progress: Console | None, workers: int) -> dict[int, str]:
    """Decode every row (in `workers` processes when > 1) with a progress bar; return {row: reason}."""
    items = list(enumerate(paths))
    chunk = max(1, min(32, len(items) // (workers * 8) or 1))
    chunks = [items[start:start + chunk] for start in range(0, len(items), chunk)]
    task = partial(decode_rows, array_path, shape, sample_rate)
    reasons: dict[int, str] = {}
    with progress_bar(len(items), f"Caching audio ({sample_rate / 1000:g} kHz, {shape[1]} samples)",
                      console=progress, enabled=progress is not None) as advance:
        if workers <= 1:
            with _single_thread_torch():
                for part in chunks:
                    reasons.update(task(part))
                    advance(len(part))
        else:
            with process_pool(workers, initializer=_init_worker) as pool:
                for part, result in zip(chunks, pool.imap(task, chunks), strict=True):
                    reasons.update(result)
                    advance(len(part))
    return reasons


def process_pool(workers: int, initializer: Callable[[], None] | None = None) -> multiprocessing.pool.Pool:
    """A multiprocessing pool: fork on Linux (as torch's DataLoader; no re-import of the caller's script),
    spawn elsewhere. Forked workers must run torch single-threaded (see _init_worker)."""
    import multiprocessing

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=initializer)


def _init_worker() -> None:
    import torch

    # One thread per worker: a forked child must not enter the parent's OpenMP pool (it can hang there),
    # and single-threaded resampling is bit-identical to the in-process path.
    torch.set_num_threads(1)


@contextlib.contextmanager
def _single_thread_torch() -> Iterator[None]:
    """Decode with one torch thread (as the workers do), then restore the caller's setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resolve_workers(workers: int | None, count: int) -> int:
    """Processes for `count` items: the caller's number (at most one per item), else the number of
    cores, or 1 below MIN_FILES_FOR_POOL items."""
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return min(workers, count)
    if count < MIN_FILES_FOR_POOL:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, count))


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


# ------------------------------------------------------------------------------------------ files

def _usable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the audio cache folder {folder}: {error.strerror or error}; "
                        f"set {CACHE_ENV} to a writable folder") from error
    if not os.access(folder, os.W_OK):
        raise UserError(f"the audio cache folder {folder} is not writable; set {CACHE_ENV} to a writable folder")
    return folder


def _host() -> str:
    """This machine's name as it appears in temporary names (no dots: the name's fields are dot-separated)."""
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in socket.gethostname()) or "host"


def _dead_builder_here(temporary: Path, array_name: str) -> bool:
    """True when `temporary` (.<array>.<host>.<pid>.<random>.tmp) was made on this host by a process now gone."""
    fields = temporary.name[len(array_name) + 2:].split(".")
    if len(fields) != 4 or fields[0] != _host() or not fields[1].isdigit():
        return False
    pid = int(fields[1])
    if pid == os.getpid():
        return False  # ours: removed by the build that made it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive under another user
    return False


def _allocate(path: Path, nbytes: int) -> None:
    """Create a zero-filled file of exactly `nbytes`, reserving the disk space now (a full disk fails here,
    not later as a crash inside the memory map)."""
    with open(path, "wb") as handle:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, nbytes)
            else:
                handle.truncate(nbytes)
        except OSError as error:
            raise UserError(f"cannot reserve {nbytes / 1e9:.2f} GB for the audio cache in {path.parent}: "
                            f"{error.strerror or error}; free space or set {CACHE_ENV} to another folder") from error


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _file_stamp(path: str) -> list[int]:
    """[size, mtime_ns] of a file; [-1, -1] when it is missing (decoding will then report it)."""
    try:
        stat = os.stat(path)
    except OSError:
        return [-1, -1]
    return [stat.st_size, stat.st_mtime_ns]


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _checksum(waveforms: np.ndarray) -> int:
    """CRC32 of every byte of the array, read in slices of CHECKSUM_CHUNK_BYTES."""
    rows_per_chunk = max(1, CHECKSUM_CHUNK_BYTES // max(1, waveforms.shape[1] * DTYPE.itemsize))
    checksum = 0
    for start in range(0, waveforms.shape[0], rows_per_chunk):
        checksum = zlib.crc32(np.ascontiguousarray(waveforms[start:start + rows_per_chunk]).data, checksum)
    return checksum
