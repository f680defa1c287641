"""Vocabulary hints for faster-whisper (`initial_prompt` or `hotwords`; which one and why:
docs/transcription.md)."""
from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

# faster-whisper truncates hotwords to max_length // 2 - 1 = 223 tokens; a term costs
# ~2-4 tokens, so a character budget keeps whole terms instead of a cut-off tail.
MAX_HOTWORD_CHARS = 600


@lru_cache(maxsize=1)
def default_vocabulary() -> tuple[str, ...]:
    text = (resources.files("chartbridge.mappings") / "vocabulary" / "clinical.txt").read_text()
    return tuple(line.strip() for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#"))


def hotword_string(org_terms: Iterable[str] = (), *, include_default: bool = True,
                   max_chars: int = MAX_HOTWORD_CHARS) -> str | None:
    """Org terms first, then the default list; deduplicated, whole terms, within budget."""
    seen: set[str] = set()
    out: list[str] = []
    size = 0
    terms = list(org_terms) + (list(default_vocabulary()) if include_default else [])
    for term in terms:
        if not isinstance(term, str):
            continue
        term = " ".join(term.split())
        if not term or term.lower() in seen:
            continue
        if size + len(term) + 2 > max_chars:
            break
        seen.add(term.lower())
        out.append(term)
        size += len(term) + 2
    return ", ".join(out) or None
