"""Turning spoken statements into note prose, deterministically (no model).

Patient speech becomes third person with the subject dropped, as notes are written
("I twisted my left ankle" -> "Twisted the left ankle"; "I have a sore throat" ->
"Reports a sore throat"); denials become pertinent negatives ("No chest pain" -> "Denies
chest pain"); a short answer takes its meaning from the question before it ("Any
fever?" + "No." -> "Denies fever"; "How often are you using the inhaler?" + "About four
times a day." -> "Using the inhaler: about four times a day."). Clinician speech loses
its conversational frame ("Your temperature is" -> "Temperature is", "I hear crackles"
-> "Crackles", "My assessment is X" -> "X", "The plan is A, B and C" -> items).

Every word written is either the transcript's own or a framing word the traceability
checker (core/trace.py) knows carries no clinical content."""
from __future__ import annotations

import re

ADVERBS = {"still", "sometimes", "usually", "also", "often", "always", "never", "just",
           "only", "really", "mostly", "already", "even", "now", "occasionally", "rarely"}
MODALS = {"can", "could", "will", "would", "should", "may", "might", "must", "shall"}
IRREGULAR_3SG = {"have": "has", "do": "does", "go": "goes", "be": "is", "am": "is",
                 "are": "is", "was": "was", "were": "was", "'m": "is", "'ve": "has"}

_I = r"(?:i|i'm|i've|i'd|i'll)"


def verb_3sg(word: str) -> str:
    w = word.lower()
    if w in IRREGULAR_3SG:
        return IRREGULAR_3SG[w]
    if w in MODALS or w.endswith(("ed", "s")) or not w.isalpha():
        return w
    if w.endswith(("sh", "ch", "x", "z", "o")):
        return w + "es"
    if len(w) > 2 and w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


def verb_ing(word: str) -> str:
    w = word.lower()
    if w.endswith("ing"):
        return w
    if w.endswith("ie"):
        return w[:-2] + "ying"
    if w.endswith("e") and not w.endswith(("ee", "ye", "oe")):
        return w[:-1] + "ing"
    return w + "ing"


def cap(text: str) -> str:
    text = text.strip(" ,;:")
    return text[:1].upper() + text[1:] if text else text


def sentence(text: str) -> str:
    text = cap(text)
    if not text:
        return text
    return text if text[-1] in ".!?" else text + "."


def drop_article(text: str) -> str:
    return re.sub(r"^(?:a|an|the)\s+", "", text.strip(), flags=re.I)


def bare(text: str) -> str:
    """Without end punctuation, leading conjunctions or fillers."""
    t = text.strip().rstrip(".!?").strip(" ,;")
    t = re.sub(r"^(?:(?:and|but|so|then|well|okay|ok|um|uh|oh)\b[,\s]*)+", "", t, flags=re.I)
    t = re.sub(r"(?:[,\s]+(?:and|but|so|or|then))+\W*$", "", t, flags=re.I)
    return t.strip(" ,;.")


# -- second person (clinician speech, questions) -------------------------------------------
def second_to_third(text: str) -> str:
    """'your' -> 'the'; subject 'you' -> 'the patient' (verb agreed); object 'you' dropped."""
    t = re.sub(r"\byourself\b", "self", text, flags=re.I)
    t = re.sub(r"\byour\b", "the", t, flags=re.I)
    t = re.sub(r"\byou(?:'re| are)\b", "the patient is", t, flags=re.I)
    t = re.sub(r"\byou(?:'ve| have)\b", "the patient has", t, flags=re.I)
    t = re.sub(r"\b(?:you (?:seem|look|appear))\b", "appears", t, flags=re.I)

    def subject(m: re.Match) -> str:
        return f"{m.group(1)} the patient {verb_3sg(m.group(2))}"
    t = re.sub(r"\b(if|when|or|and|because|that|until|unless|while)\s+you\s+([a-z']+)",
               subject, t, flags=re.I)
    t = re.sub(r"^you\s+([a-z']+)", lambda m: f"the patient {verb_3sg(m.group(1))}", t,
               flags=re.I)
    t = re.sub(r"\s+you\b", "", t, flags=re.I)               # object: "refer you to" -> "refer to"
    return t


# -- first person (patient speech) ----------------------------------------------------------
REPORTS = re.compile(rf"^(?:{_I}\s+)?(?:have been having|'ve been having|have had|'ve had|"
                     r"have got|'ve got|have|'ve|got|get|am having|'m having)\s+(?!to\b|been\b)",
                     re.I)
FEELING = re.compile(r"^(?:i\s+)?(?:feel|am feeling|'m feeling|have been feeling|"
                     r"'ve been feeling)\b\s*", re.I)


def first_to_third(text: str) -> str:
    """A patient's clause in note style: subject dropped, verbs agreed, 'my' -> 'the'."""
    t = bare(text)
    t = re.sub(r"^my\s+", "", t, flags=re.I)
    t = re.sub(r"\b(?:myself)\b", "self", t, flags=re.I)
    t = re.sub(r"\bmy\b", "the", t, flags=re.I)
    t = re.sub(r"\bme\b", "the patient", t, flags=re.I)
    t = re.sub(r"\bwhen i\s+([a-z]+)", lambda m: "when " + verb_ing(m.group(1)), t, flags=re.I)
    head = re.match(rf"^{_I}\b\s*", t, re.I)
    if head:
        word = head.group(0).strip().lower()
        rest = t[head.end():]
        if word == "i'm":
            rest = "am " + rest
        elif word == "i've":
            rest = "have " + rest
        elif word == "i'd":
            rest = "would " + rest
        elif word == "i'll":
            rest = "will " + rest
        if FEELING.match(rest):
            t = "reports feeling " + FEELING.sub("", rest, count=1)
        elif REPORTS.match(rest):
            t = "reports " + REPORTS.sub("", rest, count=1)
        elif re.match(r"^(?:am|'m)\s+\w+ing\b", rest, re.I):
            t = "reports " + re.sub(r"^(?:am|'m)\s+", "", rest, flags=re.I)
        elif re.match(r"^(?:am|'m)\b", rest, re.I):
            t = "reports being " + re.sub(r"^(?:am|'m)\s*", "", rest, flags=re.I)
        else:
            words = rest.split()
            i = 0
            while i < len(words) and words[i].lower() in ADVERBS:
                i += 1
            if i < len(words):
                words[i] = verb_3sg(words[i])
            t = " ".join(words)
    t = re.sub(r"\bi(?:'m| am)\b", "the patient is", t, flags=re.I)
    t = re.sub(r"\bi(?:'ve| have)\b", "the patient has", t, flags=re.I)
    t = re.sub(r"\bi\s+([a-z']+)", lambda m: "the patient " + verb_3sg(m.group(1)), t,
               flags=re.I)
    return second_to_third(t)


# -- questions as context ---------------------------------------------------------------
OPEN_QUESTION = re.compile(r"\b(?:what brings you|what can i do|how can i help|what's going on|"
                           r"what is going on|how are you(?: doing)?(?: today)?\??$|"
                           r"what seems to be)\b", re.I)
WH = re.compile(r"^(?:how (?:often|long|much|many|far|bad)|how|what|when|where|which|why|"
                r"who)\b\s*", re.I)
SYMPTOM_Q = re.compile(r"^(?:(?:do|did) you (?:have|get|notice|feel)|have you (?:had|noticed|"
                       r"felt|got)|are you having|have you been having|is there|are there|"
                       r"any)\b\s*", re.I)
AUX = re.compile(r"^(?:are|is|was|were|do|does|did|have|has|had|can|could|will|would)\b\s*",
                 re.I)

YES = re.compile(r"^(?:yes|yeah|yep|yup|correct|right|i do|i am|i have|i did|sure)\b[,.!]?\s*",
                 re.I)
NO = re.compile(r"^(?:no|nope|not really|never|none(?: of that)?|i don't|i do not|"
                r"i haven't|i have not)\b[,.!]?\s*", re.I)


def question_kind(question: str) -> str:
    q = bare(question)
    if OPEN_QUESTION.search(q):
        return "open"
    if WH.match(q):
        return "wh"
    if SYMPTOM_Q.match(q):
        return "symptom"
    return "yesno"


def question_topic(question: str) -> str:
    """What a question asks about, in note words ("Are you taking the metformin twice a
    day?" -> "taking the metformin twice a day")."""
    q = bare(question)
    q = re.sub(r"^(?:and|so|okay|now)\b[,\s]*", "", q, flags=re.I)
    kind = question_kind(q)
    if kind == "wh":
        q = WH.sub("", q, count=1)
    if kind == "symptom":
        q = SYMPTOM_Q.sub("", q, count=1)
        q = re.sub(r"^any\s+", "", q, flags=re.I)
    else:
        q = AUX.sub("", q, count=1)
        q = re.sub(r"^you\s+", "", q, flags=re.I)
    q = re.sub(r"^(?:been)\s+", "", q, flags=re.I)
    q = re.sub(r"\s+been\b", "", q, flags=re.I)
    q = re.sub(r"\bwhen you\s+([a-z]+)", lambda m: "when " + verb_ing(m.group(1)), q, flags=re.I)
    q = second_to_third(q)
    return drop_article(q.strip(" ,"))


def answer_prose(answer: str, question: str | None) -> tuple[str, bool, bool]:
    """(prose, negative, used the question) for a patient's statement, read with the
    question before it."""
    a = bare(answer)
    kind = question_kind(question) if question else "open"
    topic = question_topic(question) if question and kind != "open" else ""
    yes, no = YES.match(a), NO.match(a)
    if no and topic and (not a[no.end():].strip() or a[no.end() - 1:no.end()] in (",", " ")
                         and kind in ("symptom", "yesno") and not _starts_no_item(a)):
        rest = a[no.end():].strip()
        if NO.fullmatch(rest + " ") or re.fullmatch(r"(?:not at all|none|never)\W*", rest, re.I):
            rest = ""                                        # "No, never."
        out = "denies " + topic
        return (sentence(out) + (" " + sentence(first_to_third(rest)) if rest else ""), True,
                True)
    if _starts_no_item(a):
        return sentence("denies " + re.sub(r"^no\s+", "", a, flags=re.I)), True, False
    if yes and topic:
        rest = a[yes.end():].strip()
        head = ("reports " + topic) if kind == "symptom" else topic
        return (sentence(head + (": " + _lower_first(first_to_third(rest)) if rest else "")),
                False, True)
    if topic and kind in ("wh", "yesno", "symptom"):
        return sentence(topic + ": " + _lower_first(first_to_third(a))), False, True
    return sentence(_fragment(first_to_third(a), a)), False, False


def _lower_first(text: str) -> str:
    """Lower-case the first word unless it is an acronym or a number ("A1C", "PHQ")."""
    first = text.split(" ", 1)[0]
    return text if first.isupper() and len(first) > 1 else text[:1].lower() + text[1:]


def _starts_no_item(a: str) -> bool:
    return bool(re.match(r"^no\s+(?!i\b|,)[a-z]", a, re.I))


def _fragment(prose: str, original: str) -> str:
    """A noun phrase on its own ("Some yellow phlegm") reads as a report."""
    first = original.split()[0].lower() if original.split() else ""
    if first in {"a", "an", "some", "little", "lots", "more", "less", "mild", "bad", "sharp",
                 "just", "only", "mostly", "about", "around", "usually"} \
            and not prose.lower().startswith("reports"):
        return "reports " + re.sub(r"^just\s+", "", prose, flags=re.I)
    return prose


# -- clinician statements -----------------------------------------------------------------
ASSESS_PREFIX = re.compile(
    r"^(?:(?:so\s+)?(?:my|the|our)\s+)?(?:overall\s+)?(?:assessment|impression|diagnosis)"
    r"(?:\s+(?:is|would be))?\s*(?:that\s+)?[:,]?\s*"
    r"|^(?:i think\s+)?(?:this|it|that)\s+(?:is most likely|is likely|is consistent with|"
    r"looks like|sounds like|seems like|is)\s+"
    r"|^(?:i think\s+)?you have\s+", re.I)
PLAN_PREFIX = re.compile(
    r"^(?:(?:so\s+)?(?:the|my|our)\s+)?plan(?:\s+is)?(?:\s+to)?\s*[:,]?\s*", re.I)
SUBJECT_PREFIX = re.compile(
    r"^(?:so\s+)?(?:we(?:'ll| will| are going to|'re going to)|i(?:'ll| will| am going to|"
    r"'m going to| would like to|'d like to| want to)|let's|i(?:'m| am)(?=\s+\w+ing\b)|"
    r"i(?:'d| would) recommend|i recommend)\s+", re.I)
FINDING_PREFIX = re.compile(r"^(?:on (?:exam|examination)[,:]?\s*|i (?:can )?(?:hear|see|feel|"
                            r"notice)\s+|there (?:is|are)\s+|exam shows\s+)", re.I)


def clinician_prose(text: str, kind: str) -> list[str]:
    """Note sentences for a clinician's statement of `kind` (assessment | plan | finding |
    statement): list items for a plan, one sentence otherwise."""
    t = bare(text)
    t = re.sub(r"^(?:we do not|we don't) need\b", "no need for", t, flags=re.I)
    if kind == "assessment":
        t = drop_article(ASSESS_PREFIX.sub("", t, count=1))
        return [sentence(second_to_third(t))] if t else []
    if kind == "plan":
        t = PLAN_PREFIX.sub("", t, count=1)
        t = SUBJECT_PREFIX.sub("", t, count=1)
        return [sentence(drop_article(second_to_third(i))) for i in plan_items(t) if i]
    t = FINDING_PREFIX.sub("", t, count=1)
    t = re.sub(r"^(?:the|your)\s+", "", t, flags=re.I)
    return [sentence(second_to_third(t))] if t else []


DOSE_CONTINUES = re.compile(r"^(?:\d|one|two|three|four|five|six|seven|eight|nine|ten|once|twice|"
                            r"for\b|daily|as needed|times|every|each|with|mg\b|milligrams?|"
                            r"grams?|tablets?|puffs?|at night|in the morning)", re.I)


CLAUSE_CONTINUES = re.compile(r"^(?:if|or|and|when|unless|until|because|so that|in case|then)\b",
                              re.I)


def plan_items(text: str) -> list[str]:
    """'A, B, and C' -> [A, B, C]; one-word pieces stay with the next piece ("rest, ice,
    compression and elevation" is one item), a dose with its drug."""
    pieces = [p.strip() for p in re.split(r",\s*(?:and\s+)?|;\s*", text) if p.strip()]
    items: list[str] = []
    buf = ""
    for p in pieces:
        p = SUBJECT_PREFIX.sub("", p, count=1)
        if items and not buf and (DOSE_CONTINUES.match(p) or CLAUSE_CONTINUES.match(p)):     # "amoxicillin, 1 gram, ..."
            items[-1] = f"{items[-1]}, {p}"
            continue
        buf = f"{buf}, {p}" if buf else p
        if re.match(r"^(?:if|when|unless|in case)\b", buf, re.I) and buf == p:
            continue                               # "If X, call 911": X leads the item
        if len(p.split()) >= 2:
            items.append(buf)
            buf = ""
    if buf:
        if items and len(buf.split()) < 3:
            items[-1] = f"{items[-1]}, {buf}"
        else:
            items.append(buf)
    return items
