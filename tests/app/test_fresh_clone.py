"""The README's first command, verbatim, in a fresh clone: what a new user does first.

The clone is of this checkout's committed HEAD (`git clone`), into a temporary folder with
no virtual environment, no `var/` and no installed package. `make run` then creates its
own `.venv` and installs into it; only pip's download cache and the machine's local wheel
folders are warm (what any CI runner keeps between runs), so the install does not depend on
the network but does walk every step the Makefile has.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def readme_first_command() -> str:
    """The first command of the README's first shell block, without its comment."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "the README has no ```sh block"
    first = next(line for line in block.group(1).splitlines() if line.strip())
    return first.split("#", 1)[0].strip()


@pytest.mark.slow
@pytest.mark.fresh_clone
def test_readme_first_command_works_in_a_fresh_clone(tmp_path):
    if not shutil.which("git") or not shutil.which("make"):
        pytest.fail("git and make are required to play the README")
    command = readme_first_command()
    assert command == "make run"
    clone = tmp_path / "chartbridge"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
                   check=True, timeout=120)
    assert not (clone / ".venv").exists() and not (clone / "var").exists()
    # a new user's shell: no virtualenv of ours active, nothing of ours on the path
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CHARTBRIDGE_DEV_LOGIN")
           and not k.startswith(("CHARTBRIDGE_", "MAKE", "MFLAGS"))}   # not a sub-make of CI's
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    # no terminal: stdin closed, stdout and stderr are pipes (a CI log)
    out = subprocess.run(command, shell=True, cwd=clone, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=1200)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "Traceback" not in log
    # every step said what it was doing: install, model load, each chunk, each write
    assert "==> make: installing chartbridge" in out.stdout
    assert "speech model" in out.stderr and "loaded in" in out.stderr
    for n in range(1, 6):
        assert f"• chunk {n}/5 transcribed" in out.stderr, out.stderr[-3000:]
    for target in ("epic_haiku handoff", "athenaone", "fhir_docref", "hl7_mdm"):
        assert re.search(rf"^• write {target}\b.*succeeded", out.stderr, re.M), target
    # the summary: every target written, in words, and the pages' URLs each on one line
    assert re.search(r"^  epic_haiku\s+accepted\s+AMB-DEMO-0001/v2$", out.stdout, re.M)
    for target in ("athenaone", "fhir_docref", "hl7_mdm"):
        assert re.search(rf"^  {target}\s+written\s+\S+$", out.stdout, re.M), out.stdout[-2000:]
    assert re.search(r"^page review: http://127\.0\.0\.1:\d+/orgs/demo-multi/review/$",
                     out.stdout, re.M)
    assert re.search(r"^page epic_haiku_launch: http://127\.0\.0\.1:\d+/_sim/sessions/"
                     r"AMB-DEMO-0001/haiku$", out.stdout, re.M)
    assert out.stdout.rstrip().endswith("OK: every write reached its final state")
    # and it ran where the README says: the clone's own var/demo
    assert (clone / "var" / "demo" / "chartbridge.db").is_file()
