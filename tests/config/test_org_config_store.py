"""Secrets by reference, the per-process ConfigStore, and the code tables' API."""
from __future__ import annotations

import os

import pytest

from chartbridge.adapters.epic_haiku.adapter import _section_mapping
from chartbridge.config.loader import ConfigStore, get_org, load_org_file, reset_default_store
from chartbridge.config.secrets import SecretRef, resolve
from chartbridge.core.errors import ConfigError, InputError, NotFound
from chartbridge.mappings import note_type, section_table
from orgcfg_samples import EPIC_ORG, MULTI_ORG

# --- secrets --------------------------------------------------------------------------


def test_env_secret_resolves_and_unset_names_the_ref_only(monkeypatch):
    # Given an env reference
    ref = SecretRef("env:CB_TEST_SECRET")
    # When the variable is set, Then resolve returns it
    monkeypatch.setenv("CB_TEST_SECRET", "the-value")
    assert resolve(ref) == "the-value"
    # When it is unset, Then a ConfigError names the reference
    monkeypatch.delenv("CB_TEST_SECRET")
    with pytest.raises(ConfigError) as info:
        resolve(ref)
    assert "env:CB_TEST_SECRET" in str(info.value)


def test_file_secret_is_relative_to_the_config_folder(write_org, tmp_path):
    # Given a config whose secret is file:keys/fhir.pem next to it
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "fhir.pem").write_text("PEM-CONTENT\n")
    org = load_org_file(write_org(MULTI_ORG, name="multi"))
    ref = org.targets["fhir_docref"].private_key
    # When resolved from another working directory
    cwd = os.getcwd()
    try:
        os.chdir("/")
        value = resolve(ref)
    finally:
        os.chdir(cwd)
    # Then the file beside the config is read, trailing newline stripped
    assert value == "PEM-CONTENT"


def test_missing_secret_file_error_names_the_ref(tmp_path):
    ref = SecretRef("file:missing.pem", base_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve(ref)
    assert "file:missing.pem" in str(info.value) and "not found" in str(info.value)


@pytest.mark.parametrize("raw", ["hunter2", "env:", "file:", "vault:x", "env:BAD-NAME"])
def test_non_references_are_refused(raw):
    with pytest.raises(ValueError):
        SecretRef(raw)


def test_validation_never_reads_secrets(write_org, monkeypatch):
    # Given an env secret that is not set
    monkeypatch.delenv("ACME_EPIC_KEY", raising=False)
    # When the org is validated, Then it still loads (resolving is a later check)
    assert load_org_file(write_org(EPIC_ORG)).org == "acme"


# --- ConfigStore ----------------------------------------------------------------------


def test_store_caches_and_reloads_on_change(write_org, tmp_path):
    # Given a store on a folder with one org
    path = write_org(EPIC_ORG)
    store = ConfigStore(tmp_path)
    # When it is read twice, Then the same object comes back (cached)
    first = store.get("acme")
    assert store.get("acme") is first
    # When the file changes (new content, new mtime)
    path.write_text(EPIC_ORG.replace("Acme Clinic", "Acme Clinic North"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    # Then the next read sees it
    assert store.get("acme").name == "Acme Clinic North"


def test_store_refuses_a_broken_file_rather_than_serving_stale(write_org, tmp_path):
    path = write_org(EPIC_ORG)
    store = ConfigStore(tmp_path)
    store.get("acme")
    path.write_text(EPIC_ORG.replace("timezone: America/Chicago", "timezone: Nowhere/Land"))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ConfigError) as info:
        store.get("acme")
    assert info.value.key == "timezone"


@pytest.mark.parametrize("org_id", ["nobody", "../acme", "ACME", "", "acme/../acme"])
def test_unknown_or_malformed_org_is_not_found(write_org, tmp_path, org_id):
    write_org(EPIC_ORG)
    with pytest.raises(NotFound):
        ConfigStore(tmp_path).get(org_id)


def test_get_org_reads_chartbridge_config_dir(write_org, tmp_path, monkeypatch):
    # Given CHARTBRIDGE_CONFIG_DIR pointing at a folder with one org
    write_org(EPIC_ORG)
    monkeypatch.setenv("CHARTBRIDGE_CONFIG_DIR", str(tmp_path))
    reset_default_store()
    try:
        # When / Then
        assert get_org("acme").name == "Acme Clinic"
        with pytest.raises(NotFound):
            get_org("other")
    finally:
        reset_default_store()


# --- code tables ----------------------------------------------------------------------


def test_section_table_defaults_and_overrides(write_org):
    # Given an org overriding one Epic section id
    text = EPIC_ORG + ("mappings:\n  overrides:\n    sections:\n"
                       '      "51847-2": {epic_section_id: "1000456"}\n')
    org = load_org_file(write_org(text))
    table = section_table(org)
    # Then the override applies to that section only (the field the Epic plugin declares)
    assert table.get("51847-2").epic_section_id == "1000456"
    assert table.get("10164-2").epic_section_id is None             # none: Epic uses the code
    assert table.title("10164-2") == "History of present illness"
    # and the Epic adapter maps both ways, the LOINC code by default
    section_id, section_code = _section_mapping(org)
    assert section_id("51847-2") == "1000456" and section_code("1000456") == "51847-2"
    assert section_id("10164-2") == "10164-2" and section_code("10164-2") == "10164-2"
    # and an unknown code is a clear input error naming the field
    with pytest.raises(InputError) as info:
        table.get("00000-0")
    assert info.value.field == "section"


def test_note_type_mappings(write_org):
    org = load_org_file(write_org(MULTI_ORG, name="multi"))
    progress = note_type(org)                       # the org's default
    assert (progress.code, progress.txa2, progress.athena_subclass) == (
        "11506-3", "PR", "ENCOUNTERDOCUMENT_PROGRESSNOTE")
    consult = note_type(org, "11488-4")
    assert (consult.txa2, consult.athena_class, consult.athena_subclass) == (
        "CN", "clinicaldocument", "CLINICALDOCUMENT_CONSULTNOTE")
    assert consult.fhir_type.system == "http://loinc.org"


def test_every_known_section_code_is_in_the_default_table(write_org):
    from chartbridge.core.models import SECTION_CODES

    table = section_table(load_org_file(write_org(EPIC_ORG)))
    assert set(SECTION_CODES) <= set(table.codes)
