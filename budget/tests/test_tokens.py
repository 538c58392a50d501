"""Token counts, offline: exact for models whose tokenizer ships with kf (values from tiktoken itself),
a calibrated ratio otherwise."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from budget.tokens import (
    ASCII_CHARS_PER_TOKEN,
    RATIO,
    count_message_tokens,
    count_tokens,
    encoding_name,
    ratio_count,
    tools_tokens,
)

# Token ids from tiktoken 0.12 with OpenAI's vocabulary files (SHA-256 as tiktoken pins them).
GREET = "def greet(name):\n    return f'hello, {name}'\n"
MIXED = "Größenwahn und Käsekuchen — 日本語のテキスト 🚀"
SPECIAL = "<|endoftext|> is plain text here"
KNOWN = {
    "o200k_base": {"hello world": 2, GREET: 13, MIXED: 18, SPECIAL: 11},
    "cl100k_base": {"hello world": 2, GREET: 13, MIXED: 22, SPECIAL: 11},
}
KNOWN_IDS = {"o200k_base": [24912, 2375], "cl100k_base": [15339, 1917]}

# OpenAI's cookbook example ("How to count tokens with tiktoken"), whose counts it checked against the
# API's reported prompt_tokens: 129 for gpt-4 / gpt-3.5-turbo, 124 for gpt-4o.
COOKBOOK = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
                                  "into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base "
                                                           "on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do "
                                                                "better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]


@pytest.mark.parametrize(("model", "encoding"), [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("openai/gpt-4.1", "o200k_base"),
    ("gpt-5-mini", "o200k_base"), ("o3", "o200k_base"), ("o4-mini", "o200k_base"), ("gpt-4", "cl100k_base"),
    ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("gpt-oss-20b", "o200k_harmony"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama3"), ("qwen2.5-coder:7b", "qwen3"),
    ("claude-sonnet-4-5", RATIO), ("gemini-2.5-pro", RATIO), ("my-local-llama", RATIO), ("gpt-4ox", RATIO),
])
def test_models_map_to_their_encoding(model: str, encoding: str) -> None:
    assert encoding_name(model) == encoding


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_openai_counts_are_exact(model: str) -> None:
    known = KNOWN[encoding_name(model)]
    for text, tokens in known.items():
        assert count_tokens(model=model, text=text) == tokens, text


def test_the_bundled_vocabularies_are_tiktokens() -> None:
    from budget.tokens import _encoding

    for name, ids in KNOWN_IDS.items():
        assert list(_encoding(name).encode_ordinary("hello world")) == ids


def test_other_models_use_the_ratio() -> None:
    ascii_text = "x = compute(a, b)\n" * 100
    assert count_tokens(model="claude-sonnet-4-5", text=ascii_text) == math.ceil(len(ascii_text) / ASCII_CHARS_PER_TOKEN)
    assert ratio_count("日本語") == 3  # one token per non-ASCII character
    assert ratio_count("") == 0 and count_tokens(model="gpt-4o", text="") == 0
    # The ratio leans high: on code it counts at least what the OpenAI encodings count.
    assert ratio_count(GREET) >= KNOWN["cl100k_base"][GREET]


@pytest.mark.parametrize(("model", "expected"), [("gpt-4", 129), ("gpt-3.5-turbo", 129), ("gpt-4o", 124)])
def test_chat_messages_count_as_the_api_does(model: str, expected: int) -> None:
    assert count_message_tokens(model=model, messages=COOKBOOK) == expected


def test_tool_calls_and_tool_schemas_count() -> None:
    base = [{"role": "user", "content": "Fix the bug."}]
    with_call = [*base, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "src/app.py"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": GREET}]
    assert count_message_tokens(model="gpt-4o", messages=with_call) > count_message_tokens(model="gpt-4o", messages=base) + 13
    tool = {"type": "function", "function": {"name": "read_file", "description": "Read a file of the project.",
                                             "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
    assert tools_tokens(model="gpt-4o", tools=[]) == 0
    one = count_message_tokens(model="gpt-4o", messages=base, tools=[tool])
    two = count_message_tokens(model="gpt-4o", messages=base, tools=[tool, tool])
    assert count_message_tokens(model="gpt-4o", messages=base) < one < two
    assert two - one == tools_tokens(model="gpt-4o", tools=[tool]) - 12  # the fixed overhead is paid once
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello world"}, {"type": "image_url", "image_url": {}}]}]
    assert count_message_tokens(model="gpt-4o", messages=parts) == 3 + 1 + 2 + 765 + 3


def test_counting_needs_no_network_and_no_cache(tmp_path: Path) -> None:
    """In a fresh process with sockets disabled, an empty HOME and the Hugging Face hub offline, the
    encodings still load from the installed package."""
    script = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
        "from budget.tokens import count_tokens\n"
        "print(count_tokens(model='gpt-4o', text='hello world'), count_tokens(model='gpt-4', text='hello world'),"
        " count_tokens(model='llama-3.1-8b', text='hello world'))\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "QUICKTOK_DATA": str(tmp_path / "qt"),
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "tt"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "2", "2"]
    assert not any(tmp_path.iterdir())  # nothing cached or downloaded
