"""`OpenAICompatibleGenerator`: asks an OpenAI-compatible `/v1/chat/completions` endpoint
for JSON sections and keeps only what it can check against the transcript.

Configured per org by the caller (base URL, model, the API key already resolved from its
secret reference: this module never reads secrets). Errors: 429/5xx, timeouts and
connection failures -> TransientError; any other HTTP error, a body that is not the
promised JSON, or a reply that breaks the section rules (see `_validate`) ->
PermanentError with the reason. The rules drafter is never substituted for a failed reply.
Like every generator's, its sections then pass the traceability checker in draft_note
(core/trace.py), which marks any term the cited segments do not hold."""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import httpx
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from chartbridge.core.errors import ConfigError, PermanentError, TransientError
from chartbridge.core.models import SECTION_CODES, NoteSection, NoteType, TranscriptSegment
from chartbridge.core.ports import GeneratedNote

from .rules import FIRST_PERSON, HPI, ROS, _check_allowed
from .templates import VERSION_RE

log = logging.getLogger(__name__)
SYSTEM = "You are a careful clinical documentation assistant. Reply with JSON only."
FENCE = re.compile(r"\A\s*```(?:json)?\s*(.*?)\s*```\s*\Z", re.S)
HISTORY = (HPI, ROS)


def load_prompt(name: str = "note_sections") -> tuple[str, str, str]:
    path = Path(str(resources.files("chartbridge.mappings") / "prompts" / f"{name}.j2"))
    if not path.is_file():
        raise ConfigError(f"no prompt template named {name!r}", key="prompt")
    source = path.read_text(encoding="utf-8")
    m = VERSION_RE.match(source)
    if not m:
        raise ConfigError("prompt lacks a '{# version: N #}' first line", file=str(path), line=1)
    return name, m.group(1), source


class OpenAICompatibleGenerator:
    name = "openai-compatible"
    version = "1"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 timeout: float = 60.0, prompt: str = "note_sections",
                 client: httpx.Client | None = None) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base_url must be an http(s) URL", key="base_url")
        if not model:
            raise ConfigError("model is required", key="model")
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else
                           "/v1/chat/completions")
        self.model = model
        self._api_key = api_key
        self.timeout = timeout
        self.prompt_id, self.prompt_version, self._prompt = load_prompt(prompt)
        self._client = client

    def __repr__(self) -> str:                        # never show the key
        return f"OpenAICompatibleGenerator(url={self.url!r}, model={self.model!r})"

    def generate(self, segments: Sequence[TranscriptSegment], *,
                 allowed_sections: Sequence[str], note_type: NoteType | None = None,
                 settings: dict | None = None) -> GeneratedNote:
        allowed = _check_allowed(allowed_sections)
        env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        user = env.from_string(self._prompt).render(
            sections=[(c, t) for c, t in SECTION_CODES.items() if c in allowed],
            note_type=note_type.code if note_type else None,
            segments=[{"id": s.id, "text": s.text} for s in segments])
        body = {"model": self.model, "temperature": 0,
                "response_format": {"type": "json_object"},
                "messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": user}]}
        missing = [s.id for s in segments if f"[{s.id}]" not in user] + \
            [c for c in allowed if c not in user]
        if missing:
            raise ConfigError(f"prompt {self.prompt_id!r} v{self.prompt_version} does not "
                              f"show {len(missing)} of the segment ids or section codes",
                              key="prompt")
        answer = self._post(body)
        sections = self._validate(answer, allowed, {s.id for s in segments})
        return GeneratedNote(sections=sections, template_id=f"prompt:{self.prompt_id}",
                             template_version=self.prompt_version)

    # -- HTTP edge -----------------------------------------------------------------------
    def _post(self, body: dict) -> str:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        client = self._client or httpx.Client(timeout=self.timeout)
        try:
            resp = client.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise TransientError("note generator timed out", maybe_delivered=False) from None
        except httpx.TransportError as exc:
            raise TransientError(f"note generator unreachable ({type(exc).__name__})",
                                 maybe_delivered=False) from None
        finally:
            if self._client is None:
                client.close()
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(f"note generator answered HTTP {resp.status_code}",
                                 status=resp.status_code, maybe_delivered=False,
                                 retry_after=_retry_after(resp))
        if resp.status_code >= 400:
            raise PermanentError(f"note generator refused the request: HTTP "
                                 f"{resp.status_code}", status=resp.status_code)
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PermanentError("note generator answer is not a chat completion") from None
        if not isinstance(content, str):
            raise PermanentError("note generator answer has no text content")
        return content

    @staticmethod
    def _validate(content: str, allowed: set[str], known_ids: set[str]) -> list[NoteSection]:
        """The reply as canonical sections, or PermanentError naming what is wrong: not
        JSON, no 'sections' list, a section that is not {code, text, segment_ids}, a code
        that was not offered, a segment id that does not exist, a section citing no
        segment, or a history section quoting the patient in the first person. A section
        with empty text is left out (the prompt allows omitting a section)."""
        m = FENCE.match(content)
        try:
            data = json.loads(m.group(1) if m else content)
        except ValueError:
            raise PermanentError("note generator answer is not JSON") from None
        items = data.get("sections") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise PermanentError("note generator answer lacks a 'sections' list")
        merged: dict[str, NoteSection] = {}
        for n, item in enumerate(items):
            where = f"note generator answer: sections[{n}]"
            if not isinstance(item, dict):
                raise PermanentError(f"{where} is not an object")
            code, text, ids = item.get("code"), item.get("text"), item.get("segment_ids")
            if not isinstance(code, str) or not isinstance(text, str) \
                    or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise PermanentError(f"{where} lacks code, text or segment_ids")
            if code not in SECTION_CODES:
                raise PermanentError(f"{where} has an unknown section code")
            if code not in allowed:
                raise PermanentError(f"{where} is section {code}, which was not asked for")
            if not text.strip():
                continue
            unknown = [i for i in ids if i not in known_ids]
            if unknown:
                raise PermanentError(f"{where} cites {len(unknown)} segment id(s) that do "
                                     "not exist")
            if not ids:
                raise PermanentError(f"{where} cites no transcript segment")
            if code in HISTORY and FIRST_PERSON.search(text):
                raise PermanentError(f"{where} ({code}) quotes the patient in the first "
                                     "person; history is written in the third person")
            if code in merged:
                prev = merged[code]
                prev.text = prev.text + "\n" + text.strip()
                prev.segment_ids = list(dict.fromkeys(prev.segment_ids + ids))
            else:
                merged[code] = NoteSection(code=code, title=SECTION_CODES[code],
                                           text=text.strip(), segment_ids=list(ids))
        return [merged[c] for c in SECTION_CODES if c in merged]


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
