"""`chartbridge org validate`: FILE:LINE: KEY: message per problem and exit 1, a summary per
good org and exit 0, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from chartbridge.cli import main
from orgcfg_samples import EPIC_ORG, MULTI_ORG, line_of

REPO = Path(__file__).resolve().parents[2]


def test_examples_validate_by_default(capsys, monkeypatch):
    # Given the repository's config/orgs folder as the default
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("CHARTBRIDGE_CONFIG_DIR", raising=False)
    # When `org validate` runs without paths
    code = main(["org", "validate"])
    # Then every example gets a one-line summary and the exit code is 0
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "ok demo-epic: Demo Epic Clinic (targets: epic_haiku)" in out
    assert "ok demo-multi:" in out and "hl7_mdm" in out
    assert err == ""


def test_problems_are_printed_file_line_key_and_exit_1(tmp_path, capsys):
    # Given a broken file (unknown target, inline secret) and a good one
    bad_text = (EPIC_ORG.replace("private_key: env:ACME_EPIC_KEY", "private_key: s3cr3t-value")
                + "  nosuch:\n    x: 1\n")
    bad = tmp_path / "acme.yaml"
    bad.write_text(bad_text)
    good = tmp_path / "multi.yaml"
    good.write_text(MULTI_ORG)
    # When both are validated
    code = main(["org", "validate", str(bad), str(good)])
    out, err = capsys.readouterr()
    # Then each problem is one FILE:LINE: KEY: message line, the good org is summarised,
    # the exit code is 1, and neither a traceback nor the secret appears
    assert code == 1
    lines = out.splitlines()
    assert (f"{bad}:{line_of(bad_text, 'private_key:')}: targets.epic_haiku.private_key: "
            "inline secret not allowed; use env:NAME or file:PATH") in lines
    assert any(l.startswith(f"{bad}:{line_of(bad_text, 'nosuch:')}: targets.nosuch: unknown target")
               for l in lines)
    assert any(l.startswith("ok multi: Multi") for l in lines)
    assert "2 problem(s) in 1 file(s)" in err
    assert "Traceback" not in out + err
    assert "s3cr3t-value" not in out + err


def test_a_folder_argument_validates_its_yaml_files(tmp_path, capsys):
    (tmp_path / "acme.yaml").write_text(EPIC_ORG)
    assert main(["org", "validate", str(tmp_path)]) == 0
    assert "ok acme: Acme Clinic" in capsys.readouterr().out


@pytest.mark.parametrize("content", [
    b"", b"\x89PNG\r\n\x1a\n\x00\x00binary", b"{{{{", b"[" * 3000, b"org: [unclosed\n",
    b"- a\n- b\n", b"targets: 5\n", b"org: 12\nname: [1, 2]\ntimezone: {}\ntargets: [x]\n",
])
def test_garbage_never_gives_a_traceback(tmp_path, capsys, content):
    # Given a garbage file
    path = tmp_path / "acme.yaml"
    path.write_bytes(content)
    # When validated from the CLI
    code = main(["org", "validate", str(path)])
    out, err = capsys.readouterr()
    # Then exit 1, problems as FILE...: lines, no traceback
    assert code == 1
    assert out.strip(), err
    assert all(l.startswith(str(path)) for l in out.splitlines())
    assert "Traceback" not in out + err


def test_no_files_is_an_error(tmp_path, capsys):
    assert main(["org", "validate", str(tmp_path)]) == 1
    assert "no org config files found" in capsys.readouterr().err


def test_missing_path(tmp_path, capsys):
    code = main(["org", "validate", str(tmp_path / "gone.yaml")])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.strip() == f"{tmp_path / 'gone.yaml'}: file not found"
