"""`RuleBasedGenerator`: local, deterministic, no model. Splits the transcript into
statements, assigns each to a LOINC section by cue phrases and conversational context,
renders each section with a versioned template. Nothing is invented: a statement's text
comes from the transcript, a section without statements is omitted, and every section
lists the ids of the segments its statements came from."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from chartbridge.core.errors import InputError
from chartbridge.core.models import SECTION_CODES, NoteSection, NoteType, TranscriptSegment
from chartbridge.core.ports import GeneratedNote

from .templates import load_template

HPI, ROS, EXAM, LABS = "10164-2", "10187-3", "29545-1", "30954-2"
AP, ASSESSMENT, PLAN = "51847-2", "51848-0", "18776-5"

# Break before these cues even when the transcriber ran sentences together with commas.
CUE_BREAK = re.compile(
    r"[,;]?\s+(?=(?:my assessment|assessment is|the assessment|impression is|"
    r"(?:the )?plan is|your temperature|your blood pressure|on exam|i hear|there is swelling|"
    r"your oxygen|your a1c|your a one c)\b)"
    r"|,\s+(?=(?:were you|are you|do you|did you|have you|is the|is it|any)\b)", re.I)
CONJ = re.compile(r"^(?:and|but|so|then)\s+|\s+(?:and|but|so|then)$", re.I)
SENTENCE_END = re.compile(r"(?<=[.?!])\s+")

QUESTION_START = re.compile(
    r"^(?:what|how|when|where|why|who|which|are you|is the|is it|is there|were you|was it|"
    r"do you|did you|does it|have you|has it|can you|could you|any)\b", re.I)
ROS_QUESTION = re.compile(r"^(?:any|do you have|have you had|have you noticed)\b", re.I)
GREETING = re.compile(r"^(?:good (?:morning|afternoon|evening)|hi|hello|thanks?|thank you)\b"
                      r"[\s,.!]*$", re.I)

ASSESS = re.compile(r"\b(?:my assessment|assessment is|the assessment|impression|diagnosis is|"
                    r"this is (?:most likely|consistent with)|assessment)\b", re.I)
PLANS = re.compile(r"\b(?:plan is|the plan|plan|we will|i will|i'll|start(?:ing)?|prescrib\w*|"
                   r"continue|refer\w*|follow[- ]?up|recheck|return if|come back)\b", re.I)
VITALS = re.compile(r"\b(?:temperature|blood pressure|pulse|heart rate|oxygen saturation|"
                    r"saturation|respiratory rate|weight|bmi)\b", re.I)
EXAM_CUE = re.compile(r"\b(?:on exam|exam(?:ination)?|i hear|i see|i feel a|crackles|wheez\w*|"
                      r"murmur|rales|swelling|tender\w*|sensation|monofilament|reflexes|"
                      r"range of motion|bruising|ottawa|lungs? (?:are|is) clear)\b", re.I)
LAB_CUE = re.compile(r"\b(?:a1c|a one c|hemoglobin|glucose level|creatinine|cholesterol|"
                     r"x[- ]?ray shows|lab\w*)\b", re.I)
NEGATIVE = re.compile(r"^(?:no|denies|without|not any|never)\b", re.I)
FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|me|my|mine)\b", re.I)


@dataclass
class Statement:
    text: str
    segment_ids: list[str]
    section: str | None = None
    kind: str = "statement"           # assessment | plan | finding | statement


@dataclass
class _Span:
    start: int
    end: int
    segment_id: str


def split_statements(segments: Sequence[TranscriptSegment]) -> list[Statement]:
    """Statements over the whole transcript (a sentence may cross a chunk boundary), each
    with the ids of every segment it overlaps."""
    text, spans = "", []
    for seg in sorted(segments, key=lambda s: (s.start_ms, s.chunk_sequence, s.id)):
        t = " ".join(seg.text.split())
        if not t:
            continue
        if text:
            text += " "
        spans.append(_Span(len(text), len(text) + len(t), seg.id))
        text += t
    out: list[Statement] = []
    pos = 0
    pieces = []
    for sentence in SENTENCE_END.split(text):
        carry = ""
        for piece in CUE_BREAK.split(sentence):
            if len(piece.split()) <= 2:            # "My" before "assessment is": keep whole
                carry += piece + " "
                continue
            pieces.append((carry, piece))
            carry = ""
        if carry.strip():
            pieces.append(("", carry.strip()))
    for carry, piece in pieces:
        start = text.find(carry.strip() or piece, pos)
        if start < 0:
            continue
        end = text.find(piece, start) + len(piece)
        pos = end
        clean = CONJ.sub("", (carry + piece).strip(" ,;")).strip(" ,;")
        if not clean:
            continue
        ids = [s.segment_id for s in spans if s.start < end and s.end > start]
        out.append(Statement(text=_tidy(clean), segment_ids=ids))
    return out


def _tidy(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


def classify(statements: list[Statement]) -> list[Statement]:
    """Assign each statement a section (None: not part of the note)."""
    last_question: str | None = None      # "ros" | "hpi"
    in_ap = False
    for st in statements:
        t = st.text
        is_question = t.endswith("?") or bool(QUESTION_START.match(t))
        if is_question:
            last_question = "ros" if ROS_QUESTION.match(t) else "hpi"
            continue
        if GREETING.match(t):
            continue
        if ASSESS.search(t) and not PLANS.match(t):
            st.section, st.kind, in_ap = AP, "assessment", True
        elif re.search(r"\b(?:plan is|the plan)\b", t, re.I) or (in_ap and PLANS.search(t)):
            st.section, st.kind, in_ap = AP, "plan", True
        elif LAB_CUE.search(t) and not VITALS.search(t):
            st.section, st.kind = LABS, "finding"
        elif VITALS.search(t) or EXAM_CUE.search(t):
            st.section, st.kind = EXAM, "finding"
        elif in_ap:
            st.section, st.kind = AP, "plan"
        elif NEGATIVE.match(t) or last_question == "ros":
            st.section = ROS
        elif FIRST_PERSON.search(t) or last_question == "hpi":
            st.section = HPI
        last_question = None
    return statements


def _place(st: Statement, allowed: set[str]) -> str | None:
    """Where a statement goes given what the note allows."""
    code = st.section
    if code is None:
        return None
    if code == AP and AP not in allowed:
        split = ASSESSMENT if st.kind == "assessment" else PLAN
        return split if split in allowed else None
    if code == LABS and LABS not in allowed:
        return EXAM if EXAM in allowed else None
    return code if code in allowed else None


class RuleBasedGenerator:
    name = "rule-based"
    version = "1"

    def generate(self, segments: Sequence[TranscriptSegment], *,
                 allowed_sections: Sequence[str], note_type: NoteType | None = None,
                 settings: dict | None = None) -> GeneratedNote:
        allowed = _check_allowed(allowed_sections)
        template = load_template(settings, note_type.code if note_type else None)
        statements = classify(split_statements(segments))
        grouped: dict[str, list[Statement]] = {}
        for st in statements:
            code = _place(st, allowed)
            if code:
                grouped.setdefault(code, []).append(st)
        sections = []
        for code in [c for c in SECTION_CODES if c in grouped]:       # canonical order
            items = grouped[code]
            text = template.render(code=code, title=SECTION_CODES[code],
                                   note_type=note_type.code if note_type else None,
                                   items=[{"text": i.text, "kind": i.kind} for i in items])
            if not text:
                continue
            ids = list(dict.fromkeys(sid for i in items for sid in i.segment_ids))
            sections.append(NoteSection(code=code, title=SECTION_CODES[code], text=text,
                                        segment_ids=ids))
        return GeneratedNote(sections=sections, template_id=template.id,
                             template_version=template.version)


def _check_allowed(allowed_sections: Sequence[str]) -> set[str]:
    if isinstance(allowed_sections, str):
        raise InputError("allowed_sections must be a list of section codes",
                         field="allowed_sections")
    allowed = set(allowed_sections)
    unknown = sorted(allowed - set(SECTION_CODES))
    if unknown:
        raise InputError(f"allowed_sections holds unknown section codes: {', '.join(unknown)}",
                         field="allowed_sections")
    return allowed
