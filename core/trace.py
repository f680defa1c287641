"""Traceability: every clinical term in a drafted section must come from the transcript
segments that section cites. Checked on every draft before it is stored (draft_note),
whichever generator wrote it.

A *term* is any word of the section that is not connective or note-framing language
(articles, pronouns, "reports", "denies", "patient"...): drugs, doses, diagnoses,
findings, numbers and every other content word alike, so an invented word cannot slip
through by not being on a list. A term is traced when the cited segments hold the same
word after normalising case, punctuation, number spelling ("4" == "four", "101.2" ==
"one hundred one point two") and inflection ("coughing" == "cough", "forgets" ==
"forget"). A section with an untraced term is kept but marked: `NoteSection.untraced`
lists the terms, so the reviewer sees exactly what the transcript does not support."""
from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

from .models import NoteSection, TranscriptSegment

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _int_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _int_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return _int_words(n // 1000) + " thousand" + ("" if not rest else " " + _int_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def _number_words(m: re.Match) -> str:
    whole, _, frac = m.group(0).replace(",", "").partition(".")
    words = _int_words(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def normalise(text: str) -> str:
    """Lower case, no punctuation, numbers as words ("101.2" == "one hundred one point
    two"), "%" as "percent", "/" as "over", hyphens as spaces, "hundred and" as
    "hundred"."""
    t = text.lower().replace("%", " percent ").replace("-", " ").replace("/", " over ")
    t = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", t)
    t = re.sub(r"\d[\d,]*(?:\.\d+)?", _number_words, t)
    t = t.translate(str.maketrans({c: " " for c in string.punctuation + "’‘“”"}))
    t = re.sub(r"\bhundred and\b", "hundred", t)
    return " ".join(t.split())


# Words that carry no clinical content of their own: grammar, and the few framing words
# a drafter may add ("Reports ...", "Denies ...", "the patient").
FRAMING = frozenset("""
a an the and or but nor so then than that this these those it its it's is are was were be
been being am has have had having do does did doing done will would shall should can could
may might must of in on at to for from by with without about as into onto over under up
down out off if when while because since until after before during per via not no yes
never none any some all each every both either neither other another such same very just
also too only still again even there here where what which who whom whose how why
i me my mine you your yours yourself we us our he him his she her they them their self
patient patient's reports report reported denies deny denied endorses states says said
feeling feels feel being gets get got having needed need needs note notes noted
appears assessment plan
""".split())

_SUFFIXES = ("ingly", "edly", "ing", "ies", "ied", "es", "ed", "ly", "s", "e", "y")


def stem(word: str) -> str:
    """A crude, deterministic stem: enough that inflections of one word compare equal."""
    w = word.lower()
    if "_" in w:                                          # a number: compared whole
        return w
    for suffix in _SUFFIXES:
        if len(w) - len(suffix) >= 3 and w.endswith(suffix):
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiou":      # "running" -> "run"
        w = w[:-1]
    return w


_NUMBER_WORDS = frozenset(_ONES + _TENS[2:] + ["hundred", "thousand", "point"])


def tokens(text: str) -> list[str]:
    """Normalised words, a number kept whole ("500" -> "five_hundred", so that a "5"
    elsewhere does not trace it)."""
    out: list[str] = []
    run: list[str] = []
    for w in normalise(text).split() + [""]:
        if w in _NUMBER_WORDS:
            run.append(w)
            continue
        if run:
            while run and run[-1] == "point":
                run.pop()
            if run:
                out.append("_".join(run))
            run = []
        if w:
            out.append(w)
    return out


def terms(text: str) -> list[str]:
    """The clinical terms of a text: its normalised words less framing words."""
    return [w for w in tokens(text) if w not in FRAMING]


def untraced_terms(text: str, sources: Iterable[str]) -> list[str]:
    """Terms of `text` that none of `sources` holds (in order, without repeats)."""
    have: set[str] = set()
    for src in sources:
        have.update(stem(w) for w in tokens(src))
    out: list[str] = []
    for w in terms(text):
        if stem(w) not in have and w not in out:
            out.append(w)
    return out


def check_sections(sections: Sequence[NoteSection],
                   segments: Sequence[TranscriptSegment]) -> list[NoteSection]:
    """Each section with `untraced` set to the terms its cited segments do not support
    (every term, when it cites none). Sections are returned as copies."""
    by_id = {s.id: s.text for s in segments}
    out = []
    for section in sections:
        cited = [by_id[i] for i in section.segment_ids if i in by_id]
        missing = untraced_terms(section.text, cited) if cited else terms(section.text)
        out.append(section.model_copy(update={"untraced": missing}))
    return out
