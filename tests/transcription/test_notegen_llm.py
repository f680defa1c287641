"""OpenAICompatibleGenerator against a local HTTP server on 127.0.0.1:0."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chartbridge.adapters.notegen import OpenAICompatibleGenerator
from chartbridge.core.errors import ConfigError, PermanentError, TransientError
from chartbridge.core.models import TranscriptSegment

SEGS = [TranscriptSegment(id=f"rec/1/{i}", session_id="s", recording_id="rec",
                          chunk_sequence=1, start_ms=i, end_ms=i + 1, text=t, confidence=-0.1)
        for i, t in enumerate(["I have had a cough for four days.",
                               "My assessment is pneumonia, plan is amoxicillin."])]
ALLOWED = ["10164-2", "51847-2"]


class FakeLLM:
    """Answers each POST with the next queued (status, body); records requests."""

    def __init__(self):
        self.answers, self.requests = [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append((self.path, dict(self.headers),
                                       json.loads(self.rfile.read(length))))
                status, body = outer.answers.pop(0)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, content, status=200):
        self.answers.append((status, {"choices": [{"message": {"role": "assistant",
                                                               "content": content}}]}))


@pytest.fixture
def llm():
    server = FakeLLM()
    yield server
    server.server.shutdown()
    server.server.server_close()


def gen(llm):
    return OpenAICompatibleGenerator(llm.url + "/v1", "test-model", "sk-test", timeout=5)


def test_good_answer_becomes_canonical_sections(llm):
    # Given the endpoint answers two valid sections (fenced, as some models do)
    llm.reply("```json\n" + json.dumps({"sections": [
        {"code": "51847-2", "text": "Pneumonia. Amoxicillin.", "segment_ids": ["rec/1/1"]},
        {"code": "10164-2", "text": "Cough for four days.", "segment_ids": ["rec/1/0"]}]})
        + "\n```")
    # When a note is generated
    note = gen(llm).generate(SEGS, allowed_sections=ALLOWED)
    # Then sections come back in canonical order with provenance and prompt version
    assert [(s.code, s.segment_ids) for s in note.sections] == [
        ("10164-2", ["rec/1/0"]), ("51847-2", ["rec/1/1"])]
    assert (note.template_id, note.template_version) == ("prompt:note_sections", "2")
    # And the request went to /v1/chat/completions with the key and the transcript
    path, headers, body = llm.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "test-model" and "[rec/1/0] I have had a cough" in \
        body["messages"][1]["content"]
    assert "18776-5" not in body["messages"][1]["content"]       # only allowed offered


def test_empty_section_is_omitted(llm):
    llm.reply(json.dumps({"sections": [
        {"code": "10164-2", "text": "  ", "segment_ids": []},
        {"code": "51847-2", "text": "Pneumonia.", "segment_ids": ["rec/1/1"]}]}))
    note = gen(llm).generate(SEGS, allowed_sections=ALLOWED)
    assert [(s.code, s.segment_ids) for s in note.sections] == [("51847-2", ["rec/1/1"])]


@pytest.mark.parametrize("section, reason", [
    ({"code": "10187-3", "text": "Denies chest pain.", "segment_ids": ["rec/1/0"]},
     "not asked for"),
    ({"code": "12345-6", "text": "x", "segment_ids": ["rec/1/0"]}, "unknown section code"),
    ({"code": "10164-2", "text": "Invented.", "segment_ids": ["rec/9/9"]}, "do not exist"),
    ({"code": "10164-2", "text": "Cough.", "segment_ids": []}, "cites no transcript"),
    ({"code": "10164-2", "text": "I have had a cough.", "segment_ids": ["rec/1/0"]},
     "first person"),
    ({"code": "10164-2", "text": "Cough.", "segment_ids": "rec/1/0"}, "lacks code"),
])
def test_reply_breaking_the_section_rules_is_permanent_error_with_reason(llm, section,
                                                                          reason):
    # Given a reply with one section that breaks the contract
    llm.reply(json.dumps({"sections": [
        {"code": "51847-2", "text": "Pneumonia.", "segment_ids": ["rec/1/1"]}, section]}))
    # Then the whole reply is refused, naming why (nothing silently dropped or replaced)
    with pytest.raises(PermanentError, match=reason) as exc:
        gen(llm).generate(SEGS, allowed_sections=ALLOWED)
    assert "sections[1]" in str(exc.value) and "cough" not in str(exc.value).lower()


def test_prompt_states_the_section_rules_and_a_prompt_without_the_transcript_is_refused(
        llm, tmp_path, monkeypatch):
    llm.reply(json.dumps({"sections": []}))
    gen(llm).generate(SEGS, allowed_sections=ALLOWED)
    prompt = llm.requests[0][2]["messages"][1]["content"]
    assert "third person" in prompt and "Denies chest pain" in prompt
    from chartbridge.adapters.notegen import llm as llm_mod
    g = gen(llm)
    g._prompt = "{# version: 9 #}Write a note."              # an org prompt that lost the data
    with pytest.raises(ConfigError, match="segment ids or section codes"):
        g.generate(SEGS, allowed_sections=ALLOWED)
    assert llm_mod.SYSTEM


def test_llm_failure_is_not_replaced_by_the_rules_drafter(llm):
    # Given an org configured for the LLM drafter
    from types import SimpleNamespace

    from chartbridge.adapters.notegen import generator_for
    org = SimpleNamespace(drafting=SimpleNamespace(
        generator="llm", llm=SimpleNamespace(url=llm.url, model="m", api_key=None)))
    g = generator_for(org)
    assert isinstance(g, OpenAICompatibleGenerator)
    # When the reply is not the expected structure, the error reaches the caller
    llm.reply(json.dumps({"notes": "free text"}))
    with pytest.raises(PermanentError, match="'sections' list"):
        g.generate(SEGS, allowed_sections=ALLOWED)


def test_not_a_chat_completion_is_permanent_error(llm):
    llm.answers.append((200, b"<html>gateway</html>"))
    with pytest.raises(PermanentError, match="chat completion"):
        gen(llm).generate(SEGS, allowed_sections=ALLOWED)


@pytest.mark.parametrize("status", [503, 429, 500])
def test_overload_and_server_errors_are_transient(llm, status):
    llm.answers.append((status, {"error": "busy"}))
    with pytest.raises(TransientError) as exc:
        gen(llm).generate(SEGS, allowed_sections=ALLOWED)
    assert exc.value.status == status


def test_client_error_is_permanent_and_unreachable_is_transient(llm):
    llm.answers.append((401, {"error": "bad key"}))
    with pytest.raises(PermanentError, match="401"):
        gen(llm).generate(SEGS, allowed_sections=ALLOWED)
    url = llm.url
    llm.server.shutdown()
    llm.server.server_close()
    with pytest.raises(TransientError, match="unreachable"):
        OpenAICompatibleGenerator(url, "m", timeout=2).generate(SEGS, allowed_sections=ALLOWED)


def test_api_key_not_in_repr():
    g = OpenAICompatibleGenerator("http://127.0.0.1:1", "m", "sk-secret")
    assert "sk-secret" not in repr(g)
