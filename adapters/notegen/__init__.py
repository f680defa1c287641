"""Note drafting behind the `NoteGenerator` port: a local rule-based generator (default)
and an OpenAI-compatible chat-completions generator."""
from .llm import OpenAICompatibleGenerator
from .rules import RuleBasedGenerator
from .templates import SectionTemplate, load_template

__all__ = ["OpenAICompatibleGenerator", "RuleBasedGenerator", "SectionTemplate",
           "load_template"]
