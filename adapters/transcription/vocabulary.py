"""Vocabulary hints for faster-whisper (`initial_prompt` or `hotwords`; which one and why:
docs/transcription.md)."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from difflib import SequenceMatcher
from functools import lru_cache

from chartbridge.core.trace import normalise
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
    """Letters only, digits spelled ("A1C" -> "aonec", as "one seed" is heard)."""
    return re.sub(r"[^a-z]", "", normalise(text))


def hint_terms(hints: str) -> list[str]:
    """The terms of a hint string (as `hotword_string` built it)."""
    return [t.strip() for t in hints.split(",") if t.strip()]


def found_terms(text: str, terms: Iterable[str]) -> list[str]:
    low = " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "
    return [t for t in terms if f" {re.sub(r'[^a-z0-9]+', ' ', t.lower()).strip()} " in low]


SUPPORT_RATIO = 0.35      # measured: docs/transcription.md ("Hints never add a term")
SUPPORT_MARGIN_MS = 800


def _similar(term: str, words: list[str]) -> float:
    """Best difflib ratio between the term's letters and a run of `words` joined."""
    target, best = _letters(term), 0.0
    for i in range(len(words)):
        for j in range(i + 1, len(words) + 1):
            cand = _letters("".join(words[i:j]))
            best = max(best, SequenceMatcher(None, target, cand).ratio())
            if len(cand) > 2 * len(target):
                break
    return best


def _term_spans(term: str, seg) -> list[tuple[int, int]]:
    """Where in the segment's time `term` is said, estimated from its place in the text
    (the hinted decoding runs without word timestamps: asking for them changes what
    faster-whisper decodes)."""
    text, spans = seg.text, []
    span_ms = max(1, seg.end_ms - seg.start_ms)
    for m in re.finditer(rf"(?i)(?<![A-Za-z0-9]){re.escape(term)}(?![A-Za-z0-9])", text):
        a = seg.start_ms + span_ms * m.start() // max(1, len(text))
        b = seg.start_ms + span_ms * m.end() // max(1, len(text))
        spans.append((a, b))
    return spans


def supported(term: str, span: tuple[int, int], plain_words: list[tuple[int, int, str]]) -> bool:
    """Does the unhinted decoding sound like `term` over the same stretch of audio?"""
    lo, hi = span[0] - SUPPORT_MARGIN_MS, span[1] + SUPPORT_MARGIN_MS
    near = [w for s, e, w in plain_words if e > lo and s < hi]
    return bool(near) and _similar(term, near) >= SUPPORT_RATIO


def drop_unsupported(segments: list, terms: Iterable[str],
                     plain_words: list[tuple[int, int, str]]) -> list:
    """Segments without the hint terms that the unhinted decoding of the same audio does
    not support (a segment left with no words is dropped)."""
    terms = list(terms)
    out = []
    for seg in segments:
        text = seg.text
        for term in found_terms(text, terms):
            spans = _term_spans(term, seg) or [(seg.start_ms, seg.end_ms)]
            if all(supported(term, sp, plain_words) for sp in spans):
                continue
            text = re.sub(rf"(?i)(?<![A-Za-z0-9]){re.escape(term)}(?![A-Za-z0-9])[,;]?\s*",
                          "", text)
        text = re.sub(r"[,;]\s*(?=[.!?]|$)", "", " ".join(text.split())).strip(" ,;")
        text = re.sub(r"\s+(?=[.!?,;])", "", text)
        if text and text[-1] in ".!?" and not re.search(r"[A-Za-z0-9]", text[:-1]):
            text = ""
        if text != seg.text:
            if not re.search(r"[A-Za-z0-9]", text):
                continue
            seg = replace(seg, text=text)
        out.append(seg)
    return out
