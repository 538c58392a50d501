"""Token counts, offline. The `quicktok-v1` package (pinned in requirements.txt) ships the vocabularies of
OpenAI's o200k_base and cl100k_base (and Llama 3's and Qwen's) inside its wheel, so nothing is
downloaded at run time (tiktoken itself fetches its BPE files on first use). Its counts are tiktoken's
exactly: checked against tiktoken 0.12 loaded with the same vocabulary files (whose SHA-256 tiktoken
pins) on 28 M characters of Python's standard library, with no difference in any file.

Other models (Claude, Gemini, Mistral, …) ship no public tokenizer, so their counts come from a
characters-per-token ratio, calibrated with the OpenAI encodings on text kf sends to models and leaning
high (a budget should over- rather than under-estimate):
  - ASCII: 3.3 characters per token. cl100k_base gives 4.0 on Python source, 3.15 on JavaScript, 3.5 on
    CSS and HTML, 3.7 on JSON and Markdown, 4.7 on English prose; o200k_base within 0.1 of it.
  - Anything else: 1 token per character. A least-squares fit over Django's 98 translation catalogues
    gives cl100k_base 0.88 tokens per non-ASCII character (Cyrillic ~0.55, CJK ~1.6, Armenian and
    Georgian ~2) and o200k_base 0.43.
bench/budget/run.py re-measures these ratios.
"""

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import quicktok

ASCII_CHARS_PER_TOKEN = 3.3
NON_ASCII_TOKENS_PER_CHAR = 1.0
RATIO = "ratio"

# OpenAI's chat format (as counted in OpenAI's cookbook): every message is wrapped in 3 tokens, a
# `name` costs 1 more, and the reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# Tool schemas are rendered by the provider in its own format; their compact JSON plus a few tokens per
# tool (name and wrapping) comes out a little above it.
TOKENS_PER_TOOL = 8
TOOLS_OVERHEAD = 12
TOKENS_PER_TOOL_CALL = 6
IMAGE_TOKENS = 765  # a 1024×1024 image at high detail; images are rare in kf's prompts

# Model name prefixes (after any "provider/" part) → the encoding quicktok bundles; longest prefix wins.
_ENCODINGS = {
    "gpt-4o": "o200k_base", "chatgpt-4o": "o200k_base", "gpt-4.1": "o200k_base", "gpt-4.5": "o200k_base",
    "gpt-5": "o200k_base", "o1": "o200k_base", "o3": "o200k_base", "o4": "o200k_base",
    "codex-mini": "o200k_base", "gpt-oss": "o200k_harmony",
    "gpt-4": "cl100k_base", "gpt-3.5": "cl100k_base", "text-embedding-3": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
    "llama-3": "llama3", "llama3": "llama3", "meta-llama-3": "llama3",
    "qwen2": "qwen3", "qwen2.5": "qwen3", "qwen3": "qwen3",
}
_BY_LENGTH = sorted(_ENCODINGS.items(), key=lambda item: -len(item[0]))


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of one model's text: `name` is the encoding, or "ratio"."""

    name: str

    @property
    def exact(self) -> bool:
        return self.name != RATIO

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.exact:
            return _encoding(self.name).count(text)
        return ratio_count(text)


def ratio_count(text: str) -> int:
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / ASCII_CHARS_PER_TOKEN + (len(text) - ascii_chars) * NON_ASCII_TOKENS_PER_CHAR)


@lru_cache(maxsize=8)
def _encoding(name: str) -> Any:
    """Loaded once per process (o200k_base takes about a second), then shared by all threads."""
    return quicktok.get_encoding(name)


def encoding_name(model: str) -> str:
    """The encoding of `model` ("o200k_base", …), or "ratio" for a model without a bundled tokenizer."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    for prefix, encoding in _BY_LENGTH:
        if name == prefix or name.startswith((prefix + "-", prefix + ".", prefix + ":", prefix + "_")):
            return encoding
    return RATIO


@lru_cache(maxsize=256)
def counter_for(model: str) -> TokenCounter:
    return TokenCounter(encoding_name(model))


def count_tokens(*, model: str, text: str) -> int:
    """Tokens of `text` for `model`: exact where the model's tokenizer is bundled, else the ratio."""
    return counter_for(model).count(text)


def _content_tokens(counter: TokenCounter, content: Any) -> int:
    """A message's content: a string, or a list of parts ({"type": "text", "text"}, images, …)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return counter.count(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image"):
                total += IMAGE_TOKENS
            elif isinstance(part, dict):
                total += counter.count(str(part.get("text") or part.get("content") or ""))
            else:
                total += counter.count(str(part))
        return total
    return counter.count(json.dumps(content, ensure_ascii=False))


def _message_tokens(counter: TokenCounter, message: dict[str, Any]) -> int:
    total = TOKENS_PER_MESSAGE + counter.count(str(message.get("role", "")))
    total += _content_tokens(counter, message.get("content"))
    if message.get("name"):
        total += TOKENS_PER_NAME + counter.count(str(message["name"]))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        total += (TOKENS_PER_TOOL_CALL + counter.count(str(function.get("name", "")))
                  + counter.count(str(function.get("arguments", ""))))
    if message.get("tool_call_id"):
        total += counter.count(str(message["tool_call_id"]))
    return total


def tools_tokens(*, model: str, tools: Iterable[dict[str, Any]]) -> int:
    """The tool schemas of a request (OpenAI's `tools`: [{"type": "function", "function": {…}}])."""
    counter = counter_for(model)
    tools = list(tools)
    if not tools:
        return 0
    total = TOOLS_OVERHEAD
    for tool in tools:
        schema = tool.get("function", tool)
        total += TOKENS_PER_TOOL + counter.count(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    return total


def count_message_tokens(*, model: str, messages: Iterable[dict[str, Any]],
                         tools: Iterable[dict[str, Any]] | None = None) -> int:
    """The prompt tokens of one chat request as the OpenAI API takes it: every message with its wrapping,
    names and tool calls, the tool schemas, and the reply's priming."""
    counter = counter_for(model)
    total = REPLY_PRIMING + sum(_message_tokens(counter, message) for message in messages)
    return total + tools_tokens(model=model, tools=tools or ())
