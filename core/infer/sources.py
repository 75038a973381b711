"""The audio files a command reads: files named and audio files under folders named."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.errors import UserError

EXTRA_EXTENSIONS = {"aif", "aifc", "oga", "opus", "mp3"}  # spellings soundfile reads beside its format names


def audio_extensions() -> set[str]:
    """File extensions of the formats soundfile can read here (lower case, no dot)."""
    import soundfile

    return {name.lower() for name in soundfile.available_formats()} | EXTRA_EXTENSIONS


def find_audio(sources: Sequence[Path]) -> list[Path]:
    """The files named, and the audio files under the folders named (recursively), in a stable order."""
    extensions = audio_extensions()
    files: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            found = sorted(path for path in source.rglob("*")
                           if path.is_file() and path.suffix.lower().lstrip(".") in extensions)
            if not found:
                raise UserError(f"{source} holds no audio files (looked for {', '.join(sorted(extensions))}, "
                                "recursively)")
            files.extend(found)
        elif source.exists():
            files.append(source)
        else:
            raise UserError(f"{source}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise UserError("no audio to classify: pass audio files or folders")
    return unique
