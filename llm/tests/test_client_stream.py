"""How llm.client.chat assembles a streamed reply (tool-call pieces, usage, finish reason), over HTTP."""

from typing import Any

import pytest

from llm.client import ModelError, ToolCall, chat

USER = [{"role": "user", "content": "Go"}]


def piece(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def call_piece(index: int, *, arguments: str = "", call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        part.update(id=call_id, type="function")
    if name is not None:
        part["function"]["name"] = name
    return piece({"tool_calls": [part]})


def streamed(**kwargs: Any) -> Any:
    pieces: list[str] = []
    result = chat(messages=USER, on_delta=pieces.append, **kwargs)
    return result, pieces


def test_parallel_tool_calls_from_the_scripted_stream(llm_server):
    calls = [{"id": "call_a", "name": "read_file", "arguments": {"path": "a.py"}},
             {"id": "call_b", "name": "search", "arguments": {"query": "def main"}},
             {"id": "call_c", "name": "list_dir", "arguments": {}}]
    llm_server.reply("Looking.", tool_calls=calls, usage=(40, 12))
    result, pieces = streamed()
    assert result.text == "Looking." and "".join(pieces) == "Looking."
    assert result.tool_calls == [ToolCall("call_a", "read_file", '{"path": "a.py"}'),
                                 ToolCall("call_b", "search", '{"query": "def main"}'),
                                 ToolCall("call_c", "list_dir", "{}")]
    assert result.finish_reason == "tool_calls" and result.usage == {"prompt_tokens": 40, "completion_tokens": 12}


def test_interleaved_pieces_ids_only_first_no_usage_and_length_finish(llm_server):
    llm_server.reply_stream(
        piece({"role": "assistant", "content": ""}),
        call_piece(1, call_id="call_2", name="search", arguments='{"que'),
        call_piece(0, call_id="call_1", name="read_file", arguments='{"pa'),
        call_piece(1, arguments='ry": "x"}'),
        call_piece(0, arguments='th": '),
        call_piece(0, arguments='"b.py"}'),
        piece({}, finish="length"),
    )  # and no usage chunk
    result, pieces = streamed()
    assert pieces == [] and result.text is None
    assert result.tool_calls == [ToolCall("call_1", "read_file", '{"path": "b.py"}'),
                                 ToolCall("call_2", "search", '{"query": "x"}')]
    assert result.tool_calls[0].arguments == {"path": "b.py"}
    assert result.usage == {"prompt_tokens": 0, "completion_tokens": 0}
    assert result.finish_reason == "length" and result.model == llm_server.model


def test_a_name_repeated_in_every_piece_is_kept_once(llm_server):
    llm_server.reply_stream(call_piece(0, call_id="call_1", name="read_file", arguments='{"path":'),
                            call_piece(0, name="read_file", arguments=' "c.py"}'), piece({}, finish="tool_calls"))
    result, _ = streamed()
    assert result.tool_calls == [ToolCall("call_1", "read_file", '{"path": "c.py"}')]


def test_a_length_finish_of_text_is_passed_through(llm_server):
    llm_server.reply("cut at the token limit", finish_reason="length")
    result, pieces = streamed()
    assert result.finish_reason == "length" and "".join(pieces) == "cut at the token limit"


def test_a_streamed_tool_call_without_a_name_is_a_model_error_not_retried(llm_server):
    llm_server.reply_stream(call_piece(0, call_id="call_1", arguments='{"path": "a.py"}'), piece({}, finish="tool_calls"))
    llm_server.reply("never asked for")
    with pytest.raises(ModelError) as info:
        streamed()
    assert "malformed tool calls" in info.value.message and len(llm_server.requests) == 1


def test_streamed_arguments_that_are_not_json_stay_raw(llm_server):
    llm_server.reply(None, tool_calls=[{"id": "call_x", "name": "run", "arguments": "{ls -la, not json"}])
    result, _ = streamed()
    (call,) = result.tool_calls
    assert call.arguments_json == "{ls -la, not json" and call.arguments is None
    assert result.assistant_message()["tool_calls"][0]["function"]["arguments"] == "{ls -la, not json"
