"""`RuleBasedGenerator`: local, deterministic, no model. Splits the transcript into
statements, infers who said each (clinician / patient), assigns it a LOINC section by cue
phrases and conversational context (a question gives the answer after it its meaning),
writes it as note prose (prose.py: third person, pertinent negatives, plan items) and
renders each section with a versioned template. Nothing is invented: the prose uses the
transcript's words plus framing words the traceability checker (core/trace.py) knows; a
section without statements is omitted; every section lists the ids of the segments its
statements came from, and per statement its text, segments and speaker (`sources`)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from chartbridge.core.errors import InputError
from chartbridge.core.models import (SECTION_CODES, NoteSection, NoteType, SpeakerRole,
                                     StatementSource, TranscriptSegment)
from chartbridge.core.ports import GeneratedNote

from .prose import answer_prose, clinician_prose, first_to_third, sentence
from .templates import load_template

HPI, ROS, EXAM, LABS = "10164-2", "10187-3", "29545-1", "30954-2"
AP, ASSESSMENT, PLAN = "51847-2", "51848-0", "18776-5"

# Break before these cues even when the transcriber ran sentences together with commas.
CUE_BREAK = re.compile(
    r"[,;]?\s+(?=(?:my assessment|assessment is|the assessment|my impression|impression is|"
    r"(?:the )?plan is|your temperature|your blood pressure|your heart rate|your pulse|"
    r"your oxygen|your a1c|your a one c|your respiratory|your weight|on exam|i hear|"
    r"there is swelling|this is (?:a|an|most|likely|consistent)|this looks like|"
    r"i am prescribing|i'm prescribing|we will|i will start|i'll start)\b)"
    r"|,\s+(?=(?:were you|are you|do you|did you|have you|is the|is it|is there|any|how|"
    r"what|when)\b)"
    r"|\s+(?=(?:are you|do you|did you|have you|were you) \w)"
    r"|,?\s+(?=(?:i am|i'm) \w+ing\b)"
    r"|\s+(?=(?:yes|no|yeah),\s)", re.I)
# A new clause: a conjunction before a new subject ("..., but I feel very tired").
CLAUSE_BREAK = re.compile(
    r"(?:,\s*|\s+)(?:and|but|so)\s+(?=(?:i|i'm|i've|my|your|you|we|there|it|no)\b)"
    r"|,\s+(?=(?:just|your)\b)|;\s+", re.I)
SENTENCE_END = re.compile(r"(?<=[.?!])\s+")

QUESTION_START = re.compile(
    r"^(?:what|how|when|where|why|who|which|are you|is the|is it|is there|were you|was it|"
    r"do you|did you|does it|does the|have you|has it|has the|can you|could you|any)\b", re.I)
GREETING = re.compile(r"^(?:good (?:morning|afternoon|evening)|hi|hello|hey|thanks?|thank you|"
                      r"okay|ok|all right|alright)\b[\s,.!]*$", re.I)

ASSESS = re.compile(r"\b(?:assessment|impression|diagnosis is|this is (?:most likely|likely|"
                    r"consistent with)|this looks like|this sounds like|it looks like|"
                    r"you have (?:a|an)\b)", re.I)
ASSESS_START = re.compile(r"^(?:this is|it is|that is)\s+(?:a|an)?\s*(?:\w+\s+){0,3}?"
                          r"(?:\w+itis|infection|sprain|strain|fracture|disorder|disease|"
                          r"syndrome|exacerbation|pneumonia|media|hypertension|diabetes)\b",
                          re.I)
PLANS = re.compile(r"\b(?:plan is|the plan|plan|we will|we'll|i will|i'll|start(?:ing)?|"
                   r"prescrib\w*|continue|increase|decrease|stop|refer\w*|follow[- ]?up|"
                   r"recheck|return|come back|call|go to the emergency|take|drink|rest|"
                   r"schedule|order\w*|see (?:you|again)|no need for|do not need|don't need|"
                   r"milligrams?|mg|tablets?|daily|twice a day|times a day|as needed)\b", re.I)
PLAN_START = re.compile(r"^(?:(?:the )?plan|we will|we'll|i will|i'll|i am prescribing|"
                        r"i'm prescribing|i am going to|let's|take|drink|come back|return|"
                        r"call|go to|start|continue|increase|refer|follow|schedule|"
                        r"(?:so )?we do not need|(?:so )?we don't need|if (?:you|it|the)\b)",
                        re.I)
VITALS = re.compile(r"\b(?:temperature|blood pressure|pulse|heart rate|oxygen saturation|"
                    r"saturation|respiratory rate|weight|bmi)\b", re.I)
EXAM_CUE = re.compile(r"\b(?:on exam|exam(?:ination)?|i hear|i see|i feel a|crackles|wheez\w*|"
                      r"murmur|rales|swelling|tender\w*|sensation|monofilament|reflexes|"
                      r"range of motion|bruising|ottawa|lungs?|clear to|heart sounds|"
                      r"regular|eardrum|tympanic|bulging|exudate|throat is|abdomen|soft|"
                      r"rash|redness|lymph nodes?|mood|affect|speech is|you seem|you look|"
                      r"you appear|alert|oriented|air movement|pupils|edema)\b", re.I)
LAB_CUE = re.compile(r"\b(?:a1c|a one c|hemoglobin|glucose level|creatinine|cholesterol|"
                     r"x[- ]?ray shows|lab\w*|dipstick|urinalysis|culture|swab|test (?:is|was|"
                     r"came back)|score|phq|gad ?7|ekg|ecg|strep test)\b", re.I)
NEGATIVE = re.compile(r"^(?:no|denies|without|not any|never)\b", re.I)
FIRST_PERSON = re.compile(r"\b(?:i|i'm|i've|i'd|me|my|mine)\b", re.I)
SECOND_PERSON = re.compile(r"\b(?:you|your|you're|yourself)\b", re.I)
CLINICIAN_I = re.compile(r"\b(?:i (?:hear|see|notice|will|'ll|am prescribing|recommend|"
                         r"think this|want you|would like you|'d like you)|i'm prescribing|"
                         r"my (?:assessment|impression))\b", re.I)


@dataclass
class Statement:
    text: str                         # as transcribed (tidied)
    segment_ids: list[str]
    section: str | None = None
    kind: str = "statement"           # assessment | plan | finding | statement
    speaker: SpeakerRole = SpeakerRole.UNKNOWN
    question: bool = False
    context: str | None = None        # the question this statement answers
    prose: list[str] = field(default_factory=list)


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
    for sent in SENTENCE_END.split(text):
        carry = ""
        for cue_piece in CUE_BREAK.split(sent):
            for piece in CLAUSE_BREAK.split(cue_piece):
                if not piece:
                    continue
                if len(piece.split()) <= 2 and not re.fullmatch(
                        r"\s*(?:yes|no|yeah|nope|never)\b.*", piece, re.I):
                    carry += piece + " "            # "My" before "assessment is": keep whole
                    continue
                pieces.append((carry, piece))
                carry = ""
        if carry.strip():
            pieces.append(("", carry.strip()))
    pieces = [p for c, piece in pieces for p in _split_fused_question(c, piece)]
    for carry, piece in pieces:
        start = text.find(carry.strip() or piece, pos)
        if start < 0:
            continue
        end = text.find(piece, start) + len(piece)
        pos = end
        clean = (carry + piece).strip(" ,;")
        if not clean.strip(" .,;!?"):
            continue
        ids = [s.segment_id for s in spans if s.start < end and s.end > start]
        out.append(Statement(text=_tidy(clean), segment_ids=ids))
    return out


INNER_QUESTION = re.compile(r"\s(?=(?:any|are you|do you|did you|have you|were you|is there|"
                            r"is the|is it|how|what|when)\b)", re.I)


def _split_fused_question(carry: str, piece: str) -> list[tuple[str, str]]:
    """"...and I have a sore throat any fever at home?": a question fused onto a statement
    (no punctuation between them) is split off, so the statement is kept."""
    whole = (carry + piece).strip()
    if not whole.endswith("?") or QUESTION_START.match(whole):
        return [(carry, piece)]
    cuts = [m.start() for m in INNER_QUESTION.finditer(piece)]
    if not cuts:
        return [(carry, piece)]
    cut = cuts[-1]
    head, tail = piece[:cut], piece[cut:].strip()
    return [(carry, head), ("", tail)] if head.strip() else [(carry, piece)]


def _tidy(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


def _is_question(t: str) -> bool:
    return t.endswith("?") or bool(QUESTION_START.match(t))


def infer_speaker(st: Statement, previous: Statement | None) -> SpeakerRole:
    """Clinician or patient, from what is said: questions, findings, assessments, plans
    and second-person speech are the clinician's; first-person accounts and answers to a
    question are the patient's."""
    t = st.text
    if st.question or CLINICIAN_I.search(t) or ASSESS.search(t) or ASSESS_START.match(t) \
            or PLAN_START.match(t) or re.match(r"^(?:your|you (?:seem|look|appear)|on exam|"
                                               r"there (?:is|are))\b", t, re.I):
        return SpeakerRole.CLINICIAN
    if re.search(r"^(?:i am|i'm|i will|i'll|we will|we'll)\b.*\b(?:milligrams?|mg|grams?|"
                 r"times a day|twice a day|daily|tablets?)\b", t, re.I):
        return SpeakerRole.CLINICIAN                   # "I am prescribing X 500 mg ..."
    if previous is not None and previous.question:
        return SpeakerRole.PATIENT
    if FIRST_PERSON.search(t):
        return SpeakerRole.PATIENT
    if SECOND_PERSON.search(t) or VITALS.search(t) or EXAM_CUE.search(t) or LAB_CUE.search(t):
        return SpeakerRole.CLINICIAN
    if previous is not None and previous.speaker == SpeakerRole.PATIENT \
            and previous.section in (HPI, ROS):
        return SpeakerRole.PATIENT
    return SpeakerRole.CLINICIAN


def classify(statements: list[Statement]) -> list[Statement]:
    """Assign each statement a speaker, a section (None: not part of the note) and its
    note prose. A question is not note text but gives the next statement its meaning."""
    question: str | None = None
    question_ids: list[str] = []
    previous: Statement | None = None
    in_ap = seen_exam = False
    for st in statements:
        t = st.text
        st.question = _is_question(t)
        st.speaker = infer_speaker(st, previous)
        previous = st
        if st.question:
            question, question_ids = t, st.segment_ids
            continue
        if GREETING.match(t):
            continue
        if st.speaker == SpeakerRole.PATIENT:
            text, negative, used = answer_prose(t, question)
            if used:                         # the prose uses the question's words too
                st.context = question
                st.segment_ids = list(dict.fromkeys(question_ids + st.segment_ids))
            st.section = ROS if negative else HPI
            st.prose = [text] if text.strip(" .") else []
            question, question_ids = None, []
            continue
        question, question_ids = None, []
        if (ASSESS.search(t) or ASSESS_START.match(t)) and not PLAN_START.match(t):
            st.section, st.kind, in_ap = AP, "assessment", True
        elif re.search(r"\b(?:plan is|the plan)\b", t, re.I) or PLAN_START.match(t) \
                or (in_ap and PLANS.search(t)):
            st.section, st.kind, in_ap = AP, "plan", True
        elif LAB_CUE.search(t) and not VITALS.search(t):
            st.section, st.kind = LABS, "finding"
        elif VITALS.search(t) or EXAM_CUE.search(t):
            st.section, st.kind, seen_exam = EXAM, "finding", True
        elif in_ap:
            st.section, st.kind = AP, "plan"
        elif seen_exam:
            st.section, st.kind = EXAM, "finding"
        else:
            st.section = HPI
        st.prose = clinician_prose(t, st.kind) if st.section != HPI else \
            [sentence(first_to_third(t))]
    return statements


def _place(st: Statement, allowed: set[str]) -> str | None:
    """Where a statement goes given what the note allows."""
    code = st.section
    if code is None or not st.prose:
        return None
    if code == AP and AP not in allowed:
        split = ASSESSMENT if st.kind == "assessment" else PLAN
        return split if split in allowed else None
    if code == LABS and LABS not in allowed:
        return EXAM if EXAM in allowed else None
    if code == ROS and ROS not in allowed:
        return HPI if HPI in allowed else None
    return code if code in allowed else None


class RuleBasedGenerator:
    name = "rule-based"
    version = "2"

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
                                   items=[{"text": p, "kind": i.kind, "speaker": i.speaker.value}
                                          for i in items for p in i.prose])
            if not text:
                continue
            ids = list(dict.fromkeys(sid for i in items for sid in i.segment_ids))
            sources = [StatementSource(text=" ".join(i.prose), segment_ids=i.segment_ids,
                                       speaker=i.speaker) for i in items]
            sections.append(NoteSection(code=code, title=SECTION_CODES[code], text=text,
                                        segment_ids=ids, sources=sources))
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
