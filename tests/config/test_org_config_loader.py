"""Org config files: the examples validate; every broken file is reported with file, key
and line; several problems in one file are all reported."""
from __future__ import annotations

from pathlib import Path

import pytest

from chartbridge.config.loader import load_org_file, load_orgs, validate_files
from chartbridge.config.secrets import SecretRef
from chartbridge.core.errors import ConfigError
from orgcfg_samples import EPIC_ORG, MULTI_ORG, line_of

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "config" / "orgs"


def only_error(path: Path) -> ConfigError:
    configs, errors = validate_files([path])
    assert configs == []
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def test_example_orgs_validate():
    # Given the two example orgs shipped in config/orgs
    # When the folder is loaded
    orgs = load_orgs(EXAMPLES)
    # Then both are valid, with typed target settings and secrets kept as references
    assert {"demo-epic", "demo-multi"} <= set(orgs)
    epic = orgs["demo-epic"].targets["epic_haiku"]
    assert isinstance(epic.private_key, SecretRef) and str(epic.private_key) == "env:DEMO_EPIC_PRIVATE_KEY"
    multi = orgs["demo-multi"]
    assert set(multi.targets) == {"fhir_docref", "athenaone", "hl7_mdm"}
    key = multi.targets["fhir_docref"].private_key
    assert key.path == EXAMPLES / "secrets" / "fhir-private-key.pem"   # relative to the file
    assert multi.correction_for("hl7_mdm") == "append"


def test_sample_org_loads_with_defaults(write_org):
    # Given a minimal Epic org
    path = write_org(EPIC_ORG)
    # When it is loaded
    org = load_org_file(path)
    # Then omitted settings take their safe defaults
    assert org.policy.approval == "required"
    assert org.policy.consent.capture == "required"
    assert org.policy.correction == "append"
    assert org.drafting.generator == "rules"
    assert org.note_types.codes == ["11506-3"]
    assert org.targets["epic_haiku"].algorithm == "RS384"


def test_bad_yaml_reports_the_parser_line(write_org):
    # Given a file whose line 5 breaks the YAML (an unclosed flow sequence)
    text = EPIC_ORG.replace('allowed_sections:\n  - "10164-2"', 'allowed_sections: ["10164-2"\n  - "x"')
    path = write_org(text)
    # When it is validated
    err = only_error(path)
    # Then the error names the file and the parser's line, and no traceback text
    assert err.file == str(path)
    assert err.line in (5, 6)
    assert err.message.startswith("invalid YAML")


def test_unknown_target_lists_the_known_ones(write_org):
    # Given a target name no adapter has
    text = EPIC_ORG + "  epic_hyku:\n    client_id: x\n"
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then the error is at targets.epic_hyku, on its line, listing the known adapters
    assert err.key == "targets.epic_hyku"
    assert err.line == line_of(text, "epic_hyku:")
    for name in ("athenaone", "epic_haiku", "fhir_docref", "hl7_mdm"):
        assert name in err.message


def test_inline_secret_is_refused_without_echoing_it(write_org):
    # Given a private key pasted inline
    secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
    text = EPIC_ORG.replace("private_key: env:ACME_EPIC_KEY", f"private_key: {secret}")
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then the error names the key and line, says how to fix it, and never shows the value
    assert err.key == "targets.epic_haiku.private_key"
    assert err.line == line_of(text, "private_key:")
    assert err.message == "inline secret not allowed; use env:NAME or file:PATH"
    assert secret not in str(err)


def test_missing_endpoint_is_reported_at_its_parent(write_org):
    # Given an Epic target without its token_url
    text = EPIC_ORG.replace("    token_url: https://epic.acme.example/oauth2/token\n", "")
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then the missing key is named and located at the mapping that should hold it
    assert err.key == "targets.epic_haiku.token_url"
    assert err.line == line_of(text, "epic_haiku:")
    assert "missing" in err.message


def test_unknown_section_code(write_org):
    # Given a section code the engine does not know, as the second list item
    text = EPIC_ORG.replace('  - "51847-2"', '  - "99999-9"')
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then the list item is named and located
    assert err.key == "allowed_sections[1]"
    assert err.line == line_of(text, "99999-9")
    assert "unknown section code" in err.message


def test_wrong_type(write_org):
    # Given a port that is not a number
    text = MULTI_ORG.replace("port: 2575", "port: twenty")
    path = write_org(text, name="multi")
    # When validated
    err = only_error(path)
    # Then the key and its line are named
    assert err.key == "targets.hl7_mdm.port"
    assert err.line == line_of(text, "port: twenty")
    assert "integer" in err.message


def test_every_problem_in_a_file_is_reported(write_org):
    # Given one file with five independent problems
    text = (EPIC_ORG
            .replace("timezone: America/Chicago", "timezone: Mars/Olympus")
            .replace('  - "51847-2"', '  - "99999-9"')
            .replace("private_key: env:ACME_EPIC_KEY", "private_key: hunter2")
            .replace("token_url: https://epic.acme.example/oauth2/token",
                     "token_url: http://epic.acme.example/oauth2/token")
            + "colour: blue\n")
    path = write_org(text)
    # When validated
    configs, errors = validate_files([path])
    # Then all five are reported, each on its own key and line
    found = {(e.key, e.line) for e in errors}
    assert found == {
        ("timezone", line_of(text, "timezone:")),
        ("allowed_sections[1]", line_of(text, "99999-9")),
        ("targets.epic_haiku.private_key", line_of(text, "private_key:")),
        ("targets.epic_haiku.token_url", line_of(text, "token_url:")),
        ("colour", line_of(text, "colour:")),
    }
    assert configs == []
    assert all(e.file == str(path) for e in errors)


def test_problems_across_files_and_good_files_together(write_org):
    # Given a good file and a broken one
    good = write_org(EPIC_ORG)
    bad = write_org(MULTI_ORG.replace("port: 2575", "port: 0"), name="multi")
    # When both are validated
    configs, errors = validate_files([good, bad])
    # Then the good one loads and the bad one's problem is reported
    assert [c.org for c in configs] == ["acme"]
    assert [(e.file, e.key) for e in errors] == [(str(bad), "targets.hl7_mdm.port")]


def test_org_id_must_match_the_file_name(write_org):
    # Given a file named other.yaml that says org: acme
    path = write_org(EPIC_ORG, name="other")
    # When validated
    err = only_error(path)
    # Then the org key is named
    assert (err.key, err.line) == ("org", 1)


def test_duplicate_keys_are_refused(write_org):
    # Given a key written twice (PyYAML would silently keep the last)
    text = EPIC_ORG + "name: Second Name\n"
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then the second occurrence is reported
    assert (err.key, err.line) == ("name", line_of(text, "name: Second"))


def test_llm_generator_needs_llm_settings(write_org):
    # Given generator llm without its llm block
    text = EPIC_ORG + "drafting:\n  generator: llm\n"
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then drafting.llm is named, at the drafting line
    assert (err.key, err.line) == ("drafting.llm", line_of(text, "drafting:"))


def test_epic_inbound_needs_exactly_one_key_source(write_org):
    # Given both jwks_url and jwks_file
    text = EPIC_ORG + "      jwks_file: jwks.json\n"
    path = write_org(text)
    # When validated
    err = only_error(path)
    # Then the inbound block is named
    assert err.key == "targets.epic_haiku.inbound"
    assert err.line == line_of(text, "inbound:")
    assert "exactly one" in err.message


def test_at_least_one_target(write_org):
    text = EPIC_ORG.split("targets:")[0] + "targets: {}\n"
    err = only_error(write_org(text))
    assert (err.key, err.line) == ("targets", line_of(text, "targets:"))


def test_note_type_without_txa2_for_an_hl7_org(write_org):
    # Given an HL7 MDM org allowing H&P notes, which the default table gives no athena
    # mapping, and a fourth note type that no table knows
    text = MULTI_ORG.replace('allowed: ["11506-3", "11488-4"]',
                             'allowed: ["11506-3", "34117-2", "12345-6"]')
    path = write_org(text, name="multi")
    # When validated
    configs, errors = validate_files([path])
    # Then each gap is located at its list item
    by_key = {e.key: e for e in errors}
    assert set(by_key) == {"note_types.allowed[1]", "note_types.allowed[2]"}
    assert "athenaone" in by_key["note_types.allowed[1]"].message
    assert "not in the 'note_types' table" in by_key["note_types.allowed[2]"].message
    assert all(e.line == line_of(text, "allowed:") for e in errors)   # flow list: one line


def test_note_type_gap_closed_by_an_override(write_org):
    # Given the same H&P gap closed by a per-org override
    text = MULTI_ORG.replace('allowed: ["11506-3", "11488-4"]', 'allowed: ["11506-3", "34117-2"]') + (
        "mappings:\n"
        "  overrides:\n"
        "    note_types:\n"
        '      "34117-2": {athena_class: clinicaldocument, athena_subclass: CLINICALDOCUMENT_ADMISSIONDISCHARGE}\n')
    # When validated, Then it loads
    assert load_org_file(write_org(text, name="multi")).note_types.codes == ["11506-3", "34117-2"]


def test_unknown_code_table(write_org):
    text = EPIC_ORG + "mappings:\n  sections: nosuchtable\n"
    err = only_error(write_org(text))
    assert (err.key, err.line) == ("mappings.sections", line_of(text, "sections: nosuchtable"))
    assert "sections" in err.message and "note_types" in err.message     # lists the known ones


def test_plain_http_only_to_loopback(write_org):
    # Given a remote endpoint over plain http
    text = MULTI_ORG.replace("https://fhir.multi.example/R4", "http://fhir.multi.example/R4")
    err = only_error(write_org(text, name="multi"))
    assert err.key == "targets.fhir_docref.base_url"
    assert "https" in err.message
    # and the same on 127.0.0.1 is accepted (simulators)
    ok = MULTI_ORG.replace("https://fhir.multi.example/R4", "http://127.0.0.1:8082/R4/")
    org = load_org_file(write_org(ok, name="multi"))
    assert org.targets["fhir_docref"].base_url == "http://127.0.0.1:8082/R4"


@pytest.mark.parametrize("content, expect", [
    (b"", "empty"),
    (b"- just\n- a list\n", "mapping"),
    (b"\x00\x01\x02binary\xff\xfe", "UTF-8"),
    (b"org: acme\x07bell\n", "invalid YAML"),
    (b"[" * 5000, "invalid YAML"),
    (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "too many values"),
    (b"org: acme\n---\norg: other\n", "invalid YAML"),
    (b"!!python/object:os.system {}\n", "invalid YAML"),
])
def test_garbage_files_give_one_clear_error(tmp_path, content, expect):
    # Given a garbage file
    path = tmp_path / "acme.yaml"
    path.write_bytes(content)
    # When validated
    err = only_error(path)
    # Then one ConfigError explains it
    assert err.file == str(path)
    assert expect in err.message


def test_missing_file(tmp_path):
    err = only_error(tmp_path / "nope.yaml")
    assert err.message == "file not found"


def test_load_org_file_raises_config_error(write_org):
    with pytest.raises(ConfigError) as info:
        load_org_file(write_org(EPIC_ORG.replace("name: Acme Clinic", "name: ''")))
    assert info.value.key == "name"


def test_transcription_model_is_a_packaged_name(write_org):
    # Given an org choosing a packaged whisper model by name
    ok = load_org_file(write_org(EPIC_ORG + "transcription:\n  model: tiny.en\n"))
    assert ok.transcription.model == "tiny.en"
    # When the name is not a packaged model
    text = EPIC_ORG + "transcription:\n  model: large-v3\n"
    err = only_error(write_org(text))
    # Then the key and its line are named
    assert err.key == "transcription.model" and err.line == line_of(text, "model: large-v3")
