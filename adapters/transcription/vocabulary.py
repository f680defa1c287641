"""Vocabulary hints for faster-whisper (`initial_prompt` or `hotwords`; which one and why:
docs/transcription.md)."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from difflib import SequenceMatcher
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


# -- hints never add a word the audio does not support ------------------------------------
def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def hint_terms(hints: str) -> list[str]:
    """The terms of a hint string (as `hotword_string` built it)."""
    return [t.strip() for t in hints.split(",") if t.strip()]


def found_terms(text: str, terms: Iterable[str]) -> list[str]:
    low = " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "
    return [t for t in terms if f" {re.sub(r'[^a-z0-9]+', ' ', t.lower()).strip()} " in low]


SUPPORT_RATIO = 0.5       # measured: docs/transcription.md ("Hints never add a term")


def supported(term: str, plain: str) -> bool:
    """Does the unhinted decoding of the same audio sound like `term`? Some run of up to
    (words in term + 2) of its words must spell close to it (difflib ratio)."""
    target = _letters(term)
    words = re.sub(r"[^a-z0-9]+", " ", plain.lower()).split()
    n = len(term.split()) + 2
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + n) + 1):
            cand = "".join(words[i:j])
            if SequenceMatcher(None, target, cand).ratio() >= SUPPORT_RATIO:
                return True
            if len(cand) > 2 * len(target):
                break
    return False


def drop_unsupported(segments: list, terms: Iterable[str], plain: str) -> list:
    """Segments with every hint term that the unhinted decoding does not support removed
    (a segment left with no words is dropped)."""
    terms = list(terms)
    out = []
    for seg in segments:
        text = seg.text
        for term in found_terms(text, terms):
            if not supported(term, plain):
                text = re.sub(rf"(?i)(?<![A-Za-z0-9]){re.escape(term)}(?![A-Za-z0-9])[,;]?\s*",
                              "", text)
        text = " ".join(text.split()).strip(" ,;")
        if text != seg.text:
            if not re.search(r"[A-Za-z0-9]", text):
                continue
            seg = replace(seg, text=text)
        out.append(seg)
    return out
