"""Every environment variable Chartbridge reads, in one place (pydantic-settings).

`Settings` is the engine's: what `serve`, `worker`, `sweep`, `demo` and the CLI read. Each
field is the variable `CHARTBRIDGE_<FIELD>`; its description is what `chartbridge
settings` prints and what docs/deploy.md tabulates. Per-organization settings (targets,
credentials, clinician sign-in, the active overlay) live in the org's file, not here.

`TEST_SETTINGS` names the variables only the engine's own test suite reads; each adapter
plugin's `suite_variables` those its contract suite reads (live-sandbox runs of `chartbridge
contract-test`), so a vendor brings its own; `DYNAMIC_PREFIXES` the families whose names carry a
key (`CHARTBRIDGE_CONTRACT_<NAME>`, set by `contract-test` for its child process, and the
older per-org `CHARTBRIDGE_OIDC_<ORG>_*`, superseded by the org file's `sign_in.oidc`).
tests/app/test_settings.py keeps this list complete: a `CHARTBRIDGE_*` name in the code
that is in none of them fails it.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "CHARTBRIDGE_"


class Settings(BaseSettings):
    """The engine's environment. Read fresh by `Settings()`; nothing is cached at import."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        "sqlite:///./var/chartbridge.db",
        description="SQLAlchemy URL of the engine's database (postgresql+psycopg://… in production)")
    broker_url: str = Field(
        "", description="redis://… or amqp://…; empty: the in-process broker and worker inside serve")
    queue: str = Field(
        "chartbridge", description="queue name on the broker; every process of one engine uses the same")
    config_dir: Path = Field(Path("./config/orgs"), description="folder of the per-organization YAML files")
    env: str | None = Field(
        None, description="default config overlay (ORG.<env>.yaml) for orgs whose file names none "
                          "(an org's own `environment:` wins; --env on the CLI wins over both)")
    secret_key: str | None = Field(
        None, description="env:NAME or file:PATH of a ≥32-character key signing the clinician pages' "
                          "sessions; unset: a random key per process")
    rate_limit_url: str | None = Field(
        None, description="redis://… where every worker process shares each site's rate limit "
                          "(athenaOne requests_per_second); default the broker URL if it is "
                          "Redis, else per process")
    model_cache: Path | None = Field(
        None, description="where a packaged model split across packages (Whisper base) is "
                          "joined once; default ~/.cache/chartbridge/models")
    whisper_model_dir: Path | None = Field(
        None, description="a local faster-whisper model folder; unset: the packaged tiny.en")
    dev_login: bool = Field(
        False, description="1: the review pages' development sign-in, for demo-* orgs only "
                           "(chartbridge demo turns it on for itself)")
    debug: bool = Field(False, description="1: the CLI shows a traceback for an unexpected error")
    # read by deploy/Procfile's lines (and the matching CLI options)
    host: str = Field("127.0.0.1", description="the web process's listen address (serve --host)")
    web_threads: int = Field(8, description="WSGI threads of the web process (serve --threads)")
    worker_threads: int = Field(4, description="job threads per worker process (worker --threads)")
    sweep_every: float = Field(2.0, description="seconds between sweeps of the sweeper process "
                                                "(deploy/Procfile's sweep --every)")
    # trust boundaries and secrets at rest
    public_url: str | None = Field(
        None, description="the engine's public base URL (serve --public-url): redirect_uri, "
                          "Epic's token audience and Secure cookies come from it, never from "
                          "the request's Host")
    trusted_proxies: int = Field(
        0, description="how many reverse proxies in front set X-Forwarded-* (serve "
                       "--trusted-proxies); 0 trusts none")
    metrics_token: str | None = Field(
        None, description="env:NAME or file:PATH of a bearer token `/metrics` then requires "
                          "(Authorization: Bearer …); unset: /metrics is open, so keep it off "
                          "the public listener")
    token_keys: str | None = Field(
        None, description="env:NAME or file:PATH holding the Fernet keys (comma- or newline-"
                          "separated, newest first) that seal the tokens the engine keeps; "
                          "without it, derived from CHARTBRIDGE_SECRET_KEY, else random per "
                          "process")

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Variable name (the prefix + the field, upper-cased) -> description, per field."""
        return {PREFIX + name.upper(): f.description or "" for name, f in cls.model_fields.items()}

    def shown(self) -> list[tuple[str, str, str]]:
        """(variable, value safe to print, description): passwords in URLs are masked, the
        secret key is a reference already."""
        out = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            text = "" if value is None else str(value)
            if name.endswith("_url") and text:
                text = _mask(text)
            out.append((PREFIX + name.upper(), text, field.description or ""))
        return out


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# Variables only the test and contract suites read.
TEST_SETTINGS = {
    "CHARTBRIDGE_TEST_POSTGRES_URL": "the PostgreSQL server the suite makes its databases on",
    "CHARTBRIDGE_TEST_AMQP_URL": "the RabbitMQ server of the production-pairing test",
    "CHARTBRIDGE_UPDATE_SAMPLES": "1: the contract suites rewrite their recorded samples",
    "CHARTBRIDGE_WRITE_SAMPLES": "1: the contract suites write their samples",
    "CHARTBRIDGE_PROPERTY_EXAMPLES": "how many histories the stateful property tests generate",
}

# Families of variables whose names carry a key.
DYNAMIC_PREFIXES = {
    "CHARTBRIDGE_CONTRACT_": "set by `chartbridge contract-test` for its suite process "
                             "(BASE_URL, CLIENT_ID, TOKEN_URL, JWKS_URL, KEY, KEY_ID, ALG, HOST, PORT)",
    "CHARTBRIDGE_OIDC_": "older per-org clinician sign-in (CHARTBRIDGE_OIDC_<ORG>_ISSUER, "
                         "_CLIENT_ID, _CLIENT_SECRET, _ROLE_CLAIM); the org file's sign_in.oidc wins",
}


def suite_variables() -> dict[str, str]:
    """The variables each adapter plugin's contract suite reads (its `suite_variables`)."""
    from chartbridge.adapters.registry import registry

    return {n: m for p in registry.plugins() for n, m in p.suite_variables.items()}


def documented(name: str) -> bool:
    return (name in Settings.variables() or name in TEST_SETTINGS or name in suite_variables()
            or any(name.startswith(p) for p in DYNAMIC_PREFIXES))


def load_settings() -> Settings:
    """`Settings()`, with a bad value reported as one ConfigError naming the variable."""
    from pydantic import ValidationError

    from chartbridge.core.errors import ConfigError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = PREFIX + str(first["loc"][0]).upper() if first.get("loc") else PREFIX
        raise ConfigError(str(first["msg"]), key=name) from None
