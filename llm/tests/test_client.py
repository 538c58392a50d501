"""llm.client.chat against the scripted OpenAI-compatible server, over real HTTP on loopback."""

import json
import logging
import socket

import pytest

from llm.client import (
    ChatResult,
    ModelError,
    ModelNotConfigured,
    ToolCall,
    chat,
    llm_config,
    model_configured,
)

USER = [{"role": "user", "content": "Say hi"}]


def test_chat_returns_text_usage_model_and_sends_the_configured_model_and_key(llm_server):
    llm_server.reply("hi there", usage=(21, 4))
    result = chat(messages=USER)
    assert isinstance(result, ChatResult)
    assert result.text == "hi there" and result.tool_calls == []
    assert result.usage == {"prompt_tokens": 21, "completion_tokens": 4}
    assert result.model == llm_server.model and result.finish_reason == "stop"
    (request,) = llm_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {llm_server.api_key}"
    assert request.body["model"] == llm_server.model and request.body["messages"] == USER
    assert "tools" not in request.body and "response_format" not in request.body


def test_chat_passes_model_override_tools_max_tokens_and_response_format(llm_server):
    llm_server.reply("{}")
    tools = [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                               "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
    chat(messages=USER, model="other-model", tools=tools, max_tokens=77, response_format={"type": "json_object"},
         temperature=0.0, tool_choice="auto")
    body = llm_server.requests[0].body
    assert body["model"] == "other-model" and body["tools"] == tools and body["max_tokens"] == 77
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0.0
    assert body["tool_choice"] == "auto"


def test_chat_tool_calls_round_trip_into_the_next_request(llm_server):
    llm_server.reply(None, tool_calls=[{"id": "call_1", "name": "read_file", "arguments": {"path": "a.py"}},
                                       {"id": "call_2", "name": "search", "arguments": "{not json"}])
    first = chat(messages=USER)
    assert first.finish_reason == "tool_calls" and first.text is None
    assert [c.name for c in first.tool_calls] == ["read_file", "search"]
    assert first.tool_calls[0].arguments == {"path": "a.py"} and first.tool_calls[0].id == "call_1"
    assert first.tool_calls[1].arguments is None and first.tool_calls[1].arguments_json == "{not json"

    llm_server.reply("done")
    messages = [*USER, first.assistant_message(),
                {"role": "tool", "tool_call_id": "call_1", "content": "print('a')"},
                {"role": "tool", "tool_call_id": "call_2", "content": "bad arguments"}]
    assert chat(messages=messages).text == "done"
    sent = llm_server.requests[1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": "{not json"}}]}
    assert sent[2]["tool_call_id"] == "call_1"


def test_chat_streams_deltas_and_assembles_the_same_result(llm_server):
    llm_server.reply("streamed words arrive in pieces", usage=(30, 9),
                     tool_calls=[{"id": "call_9", "name": "run", "arguments": {"command": "ls -la"}}])
    pieces: list[str] = []
    result = chat(messages=USER, on_delta=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == "streamed words arrive in pieces"
    assert result.text == "streamed words arrive in pieces"
    assert result.tool_calls == [ToolCall(id="call_9", name="run", arguments_json='{"command": "ls -la"}')]
    assert result.usage == {"prompt_tokens": 30, "completion_tokens": 9} and result.finish_reason == "tool_calls"
    body = llm_server.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("base_url,api_key,model", [("", "", ""), ("http://127.0.0.1:9/v1", "k", ""),
                                                    ("", "", "gpt-x")])
def test_chat_without_a_configured_model_is_a_clear_error(settings, base_url, api_key, model):
    settings.KF_LLM_BASE_URL, settings.KF_LLM_API_KEY, settings.KF_LLM_MODEL = base_url, api_key, model
    assert not model_configured()
    with pytest.raises(ModelNotConfigured) as info:
        chat(messages=USER)
    assert info.value.status_code == 503 and info.value.default_code == "model_not_configured"


def test_a_key_without_a_base_url_means_openai_and_a_base_url_needs_no_key(settings):
    settings.KF_LLM_BASE_URL, settings.KF_LLM_API_KEY, settings.KF_LLM_MODEL = "", "sk-x", "gpt-x"
    assert llm_config().base_url == "https://api.openai.com/v1"
    settings.KF_LLM_BASE_URL, settings.KF_LLM_API_KEY = "http://127.0.0.1:11434/v1", ""
    assert model_configured() and llm_config().server == "http://127.0.0.1:11434"


def test_upstream_500_is_a_model_error_with_the_status(llm_server, settings):
    settings.KF_LLM_MAX_ATTEMPTS = 2
    llm_server.fail(500, message="the GPU caught fire", times=2)
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert info.value.status_code == 502 and info.value.details == {"upstream_status": 500, "attempts": 2}
    assert "the GPU caught fire" in info.value.message
    assert len(llm_server.requests) == 2


def test_a_transient_500_is_retried_once(llm_server):
    llm_server.fail(503)
    llm_server.reply("recovered")
    assert chat(messages=USER).text == "recovered"


def test_the_api_key_never_appears_in_errors_or_logs(llm_server, caplog):
    caplog.set_level(logging.DEBUG)
    llm_server.fail(401, message=f"Incorrect API key provided: {llm_server.api_key}")
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert info.value.upstream_status == 401
    llm_server.fail(400, message=f"bad request from {llm_server.api_key}")
    with pytest.raises(ModelError) as second:
        chat(messages=USER)
    assert "bad request from ***" in second.value.message
    for error in (info.value, second.value):
        assert llm_server.api_key not in error.message and llm_server.api_key not in json.dumps(error.details)
    assert caplog.records and all(llm_server.api_key not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("script", [
    lambda s: s.garbage(b"<html>502 Bad Gateway</html>", content_type="text/html"),
    lambda s: s.garbage(b"{truncated"),
    lambda s: s.reply_raw({"id": "x", "object": "chat.completion"}),
    lambda s: s.reply_raw({"choices": [{"index": 0, "message": "not a dict"}]}),
    lambda s: s.reply_raw({"choices": [{"index": 0, "message": {"role": "assistant", "content": 42}}]}),
    lambda s: s.reply_raw({"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [{"id": 1}]}}]}),
    lambda s: s.reply_raw([1, 2, 3]),
], ids=["html", "bad-json", "no-choices", "message-not-dict", "content-not-text", "bad-tool-calls", "json-list"])
def test_garbage_from_the_model_server_is_a_model_error(llm_server, script):
    script(llm_server)
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert info.value.status_code == 502


def test_a_slow_model_server_times_out_with_a_clear_error(llm_server, settings):
    settings.KF_LLM_TIMEOUT_SECONDS, settings.KF_LLM_MAX_ATTEMPTS = 0.3, 2
    llm_server.reply("too late", delay=3)
    llm_server.reply("too late again", delay=3)
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert "did not answer within 0.3 s (gave up after 2 attempts)." in info.value.message
    assert len(llm_server.requests) == 2 and llm_server.requests[0].client_gone.wait(5)


def test_an_unreachable_model_server_is_a_model_error(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    settings.KF_LLM_BASE_URL, settings.KF_LLM_API_KEY, settings.KF_LLM_MODEL = f"http://127.0.0.1:{port}/v1", "", "m"
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert "Could not reach the model server (http://127.0.0.1:" in info.value.message
