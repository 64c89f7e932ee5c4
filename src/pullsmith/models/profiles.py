"""Which protocol and edit forms suit a model, looked up by its name.

Native tool calling suits models trained for it; small models follow the text protocol (one
fenced ```bash block per reply) far more reliably. Unknown models get the text protocol, which
works with every chat model. `--protocol` (or `protocol` in the settings) overrides the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from pullsmith.config import EDIT_FORMS, LOCAL_MODEL_NAME

PROTOCOLS = ("text", "tools")


@dataclass(frozen=True)
class Profile:
    """How pullsmith talks to a model: its protocol and the edit forms its prompt teaches."""

    protocol: str
    # Taught in the prompt, preferred first.
    edit_forms: tuple[str, ...]
    note: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}."
            )
        unknown = [form for form in self.edit_forms if form not in EDIT_FORMS]
        if unknown:
            raise ValueError(
                f"unknown edit forms {unknown}; known ones are {', '.join(EDIT_FORMS)}."
            )


SMALL_TEXT_FORMS = ("whole-file", "replace-function", "apply-patch")
TOOLS_FORMS = ("apply-patch", "search-replace", "whole-file")

BUNDLED = Profile(
    "text",
    SMALL_TEXT_FORMS,
    "the bundled model; does not emit native tool calls with its stock chat template "
    "(0 of 5 measured)",
)
SMALL = Profile("text", SMALL_TEXT_FORMS, "small open model: one ```bash block per reply")
TOOL_CALLER = Profile("tools", TOOLS_FORMS, "large model trained for native tool calls")
CLAUDE = Profile(
    "tools",
    TOOLS_FORMS,
    "Claude: native tool use (tool_use / tool_result blocks) through the Anthropic provider, "
    "or tool calls through an OpenAI-compatible router",
)
DEFAULT = Profile(
    "text",
    ("whole-file", "apply-patch", "replace-function"),
    "unknown model: the text protocol works with every chat model",
)

# Patterns are fnmatch-style and matched against the lower-cased model name; the first row with
# a matching pattern wins. `[!0-9.]` before a size keeps "3b" from matching "33b" or "0.3b".
TABLE: tuple[tuple[tuple[str, ...], Profile], ...] = (
    ((LOCAL_MODEL_NAME, "*qwen2.5-coder-1.5b*", "*qwen2.5-coder:1.5b*"), BUNDLED),
    # Claude by any route: the Anthropic API (`claude-…`), or a router's `anthropic/claude-…`.
    (("claude-*", "*/claude-*", "anthropic/*"), CLAUDE),
    (
        (
            "*qwen2.5-coder*0.5b*",
            "*qwen2.5-coder*[!0-9.]3b*",
            "*qwen2.5-coder*[!0-9.]7b*",
            "*llama*3*[!0-9.][138]b*",
            "*phi-*",
            "*phi[0-9]*",
            "*gemma*",
            "*deepseek-coder*1.3b*",
            "*deepseek-coder*6.7b*",
            "*0.5b*",
            "*1.5b*",
            "*[!0-9.]1b*",
            "*[!0-9.]3b*",
            "*[!0-9.]7b*",
        ),
        SMALL,
    ),
    (
        (
            "*gpt-4o*",
            "*gpt-4.1*",
            "*gpt-5*",
            "o3*",
            "*/o3*",
            "o4*",
            "*/o4*",
            "*qwen*-coder[-:]32b*",
            "*qwen*-coder[-:]480b*",
            "*deepseek-v3*",
            "*deepseek-chat*",
            "*mistral-large*",
            "*gemini*",
        ),
        TOOL_CALLER,
    ),
)


def profile_for(model_name: str) -> Profile:
    """The profile of the first table row whose pattern matches `model_name`; else DEFAULT."""
    name = model_name.strip().lower()
    for patterns, profile in TABLE:
        if any(fnmatchcase(name, pattern) for pattern in patterns):
            return profile
    return DEFAULT


def resolve_edit_forms(setting: str, model_name: str) -> tuple[str, ...]:
    """The edit forms a run teaches: the `edit_forms` setting, or the model's profile's."""
    if setting == "auto":
        return profile_for(model_name).edit_forms
    return tuple(form for form in setting.split(",") if form)


def resolve_protocol(setting: str, model_name: str) -> str:
    """The protocol a run uses: the `protocol` setting, or the model's profile when "auto"."""
    return profile_for(model_name).protocol if setting == "auto" else setting
