"""The README's curl walk-through of the capture API, run line for line (bash, curl, jq and
the `chartbridge api assertion` command) against a real engine and the three simulators, so
it cannot rot."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.site import ApiSite, wav

REPO = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    part = text.split("## The capture API, by hand", 1)[1]
    return re.search(r"```sh\n(.*?)```", part, re.S).group(1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_readme_curl_walkthrough_writes_every_target(tmp_path, database_url):
    for tool in ("bash", "curl", "jq"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is needed to play the README")
    os.environ.setdefault("ATHENA_CLIENT_SECRET", "sim-secret")
    site = ApiSite(tmp_path / "site", database_url, orgs=("demo-multi",),
                   client_id="demo-capture-app")
    try:
        key = tmp_path / "demo-capture-app.key.json"
        key.write_text(json.dumps(site.keys[("demo-multi", "demo-capture-app")].as_dict(private=True)))
        (tmp_path / "chunk1.wav").write_bytes(wav(1.0))
        env = {**os.environ, "ENGINE": site.url, "KEY": str(key),
               "ID_TOKEN": site.clinician_token("clin-77", "Dr Readme",
                                                   org="demo-multi"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        last = json.loads(out.stdout.strip().splitlines()[-1])
        assert {w["target"]: w["status"] for w in last["writes"]} == {
            "fhir_docref": "written", "athenaone": "written", "hl7_mdm": "written"}
        assert all(w["external_id"] for w in last["writes"])
        draft = site.engine.store.drafts("demo-multi")[0][0]
        assert site.engine.store.approval("demo-multi", draft.id).approver.value == "clin-77"
    finally:
        site.close()
