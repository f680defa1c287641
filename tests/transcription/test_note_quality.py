"""bench/note_quality.py: the fact matcher and the invented-term count (fast), and the
whole check on every visit fixture (slow: transcribes, cached per run in var/cache)."""
from __future__ import annotations

import pytest

from bench import note_quality as nq
from bench.visits import visits


def test_fact_matcher_reads_numbers_words_and_small_gaps():
    assert nq.has_fact("Temperature is 101.2.", ["temperature 101.2"])
    assert nq.has_fact("Temperature is one hundred and one point two.", ["temperature 101.2"])
    assert nq.has_fact("Add empagliflozin 10mg daily.", ["10 milligrams"])
    assert nq.has_fact("Denies thoughts on harming self.", ["denies thoughts of harming"])
    assert not nq.has_fact("Temperature is 100.2.", ["temperature 101.2"])
    assert not nq.has_fact("Chest pain reported, denies nothing.", ["denies chest pain"])
    assert nq.has_fact("No blood.", ["denies blood", "no blood"])


def test_invented_terms_are_unsaid_drugs_and_numbers():
    script = "Continue metformin one hundred milligrams and call nine one one, one fifty."
    assert nq.invented_terms("Continue metformin 100 milligrams, call 911, 150.", script) == []
    assert nq.invented_terms("Continue metformin and lisinopril 200 mg.", script) == [
        "lisinopril", "200"]


def test_every_visit_has_its_facts_and_the_groups_exist():
    groups = {v.group for v in visits()}
    assert groups == {"encounters", "dev", "holdout"}
    for v in visits():
        facts = v.facts()
        assert facts and all(code in nq.SHORT for code in facts), v.name
        assert all(alts for fs in facts.values() for alts in fs)


def test_drafter_alone_puts_every_fact_in_its_section_from_the_scripts(capsys):
    # Given perfect transcripts (the scripts, without speaker labels)
    rc = nq.main(["--from-script", "--check", "--no-hints-run", "--groups", "encounters,dev"])
    out = capsys.readouterr().out
    # Then the drafter alone meets the check: every fact, nothing invented, third person
    assert rc == 0, [line for line in out.splitlines() if line.startswith("FAIL")]
    assert "| **encounters** | all |  |  |  |  |  | **1.00** (71/71) | 0 | 0 | 0 | 0 |" in out


@pytest.mark.slow
# It transcribes every fixture visit twice (with and without hints) on the CPU before the
# cache is warm: minutes on a loaded 2-core machine, past the suite's 300 s hang guard.
@pytest.mark.timeout(1200)
def test_note_quality_check_on_the_heard_facts_passes(capsys):
    # When the benchmark's --check runs over every visit (transcripts cached per run)
    rc = nq.main(["--check", "--heard-only"])
    out = capsys.readouterr().out
    print(out)
    # Then every required fact the transcript holds is in its section of the fixtures'
    # notes, nothing is invented, history is third person, and the holdout visits score
    # within 10 % of the fixtures
    assert rc == 0, [line for line in out.splitlines() if line.startswith("FAIL")]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="speech recognition: the default model does not hear "
                   "7 of the fixtures' 71 facts (mostly the patient voice: 'cough and a "
                   "fever' -> 'Koff and a femur'); see docs/transcription.md")
def test_note_quality_strict_check_every_fact_of_the_fixtures(capsys):
    assert nq.main(["--check"]) == 0


def test_check_fails_on_a_copied_hint_and_on_first_person_history():
    # Given scores of a fixture whose transcript gained a hint term and quotes the patient
    v = next(v for v in visits(("encounters",)))
    bad = nq.Score(visit=v, found={"10164-2": (1, 1)}, hint_added=["metformin"],
                   first_person=2)
    # Then the check names both problems
    fails = nq.check([bad])
    assert any("metformin" in f for f in fails) and any("first-person" in f for f in fails)
    assert nq.check([nq.Score(visit=v, found={"10164-2": (1, 1)})]) == []
