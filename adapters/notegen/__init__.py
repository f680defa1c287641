"""Note drafting behind the `NoteGenerator` port: a local rule-based generator (default)
and an OpenAI-compatible chat-completions generator."""
from .llm import OpenAICompatibleGenerator
from .rules import RuleBasedGenerator
from .templates import SectionTemplate, load_template

__all__ = ["OpenAICompatibleGenerator", "RuleBasedGenerator", "SectionTemplate",
           "load_template"]


def generator_for(org, *, secrets=None):
    """The org's note generator from its `drafting` settings."""
    drafting = getattr(org, "drafting", None)
    if drafting is None or drafting.generator == "rules":
        return RuleBasedGenerator()
    llm = drafting.llm
    api_key = None
    if llm.api_key is not None:
        if secrets is None:
            raise ValueError("a secret resolver is needed for an LLM api_key")
        api_key = secrets(str(llm.api_key), getattr(llm.api_key, "base_dir", None))
    return OpenAICompatibleGenerator(llm.url, llm.model, api_key)


__all__.append("generator_for")
