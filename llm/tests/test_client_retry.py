"""llm.client.chat's retries, backoff, cancel and error wording, against the scripted server over HTTP."""

import email.utils
import threading
import time
from typing import Any

import pytest

from llm.client import ModelCancelled, ModelError, RetryPolicy, chat, retry_policy

USER = [{"role": "user", "content": "Say hi"}]
LONG_ANSWER = " ".join(f"word{i}" for i in range(60))  # 50+ streamed pieces: time to cancel in the middle


class Retries:
    """An on_retry callback that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, ModelError]] = []

    def __call__(self, attempt: int, wait: float, error: ModelError) -> None:
        self.calls.append((attempt, wait, error))


def run_in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target()` in a thread (as the agent runs chat()); the outcome lands in the dict."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # noqa: BLE001 (the test inspects whatever it was)
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_a_429_is_retried_and_on_retry_is_told_before_the_wait(llm_server):
    llm_server.fail(429, message="slow down")
    llm_server.reply("hi after waiting")
    retries = Retries()
    assert chat(messages=USER, on_retry=retries).text == "hi after waiting"
    assert len(llm_server.requests) == 2
    ((attempt, wait, error),) = retries.calls
    assert attempt == 1 and 0 <= wait <= 0.05 and error.upstream_status == 429


def test_retry_after_is_honoured(llm_server, settings):
    settings.KF_LLM_RETRY_MAX_WAIT_SECONDS = 5
    llm_server.fail(429, retry_after="1")
    llm_server.reply("ok")
    retries = Retries()
    assert chat(messages=USER, on_retry=retries).text == "ok"
    first, second = llm_server.requests
    assert second.received_at - first.received_at >= 1.0
    assert [wait for _, wait, _ in retries.calls] == [1.0]


def http_date(offset_seconds: float) -> str:
    return email.utils.formatdate(time.time() + offset_seconds, usegmt=True)


# Header values are made when the test runs (a date made at collection may have passed by then).
@pytest.mark.parametrize("headers,low,high", [
    (lambda: {"retry-after-ms": "300"}, 0.3, 0.3),
    (lambda: {"Retry-After": "120"}, 0.5, 0.5),  # capped by KF_LLM_RETRY_MAX_WAIT_SECONDS
    (lambda: {"Retry-After": http_date(60)}, 0.5, 0.5),  # an HTTP date, capped
    (lambda: {"Retry-After": http_date(-60)}, 0.0, 0.0),  # a date gone by
    (lambda: {"Retry-After": "soon"}, 0.0, 0.05),  # unreadable: the usual backoff
], ids=["ms", "capped", "http-date", "past-date", "unreadable"])
def test_retry_after_forms_and_cap(llm_server, settings, headers, low, high):
    settings.KF_LLM_RETRY_MAX_WAIT_SECONDS = 0.5
    settings.KF_LLM_RETRY_BASE_SECONDS = 0.05
    llm_server.fail(503, headers=headers())
    llm_server.reply("ok")
    retries = Retries()
    assert chat(messages=USER, on_retry=retries).text == "ok"
    ((_, wait, _),) = retries.calls
    assert low <= wait <= high


def test_a_server_failing_every_attempt_gives_the_last_error_and_the_count(llm_server, settings):
    settings.KF_LLM_MAX_ATTEMPTS = 3
    llm_server.fail(500, message="the GPU caught fire", times=3)
    llm_server.reply("never asked for")
    retries = Retries()
    with pytest.raises(ModelError) as info:
        chat(messages=USER, on_retry=retries)
    assert info.value.status_code == 502 and info.value.default_code == "model_error"
    assert "the GPU caught fire" in info.value.message and "gave up after 3 attempts" in info.value.message
    assert info.value.details == {"upstream_status": 500, "attempts": 3}
    assert len(llm_server.requests) == 3 and llm_server.pending() == 1
    assert [attempt for attempt, _, _ in retries.calls] == [1, 2]


def test_max_attempts_argument_overrides_the_setting(llm_server, settings):
    settings.KF_LLM_MAX_ATTEMPTS = 4
    llm_server.fail(502, times=4)
    with pytest.raises(ModelError) as info:
        chat(messages=USER, max_attempts=2)
    assert len(llm_server.requests) == 2 and info.value.details["attempts"] == 2
    llm_server.reset()
    llm_server.fail(502)
    with pytest.raises(ModelError) as single:
        chat(messages=USER, max_attempts=1)
    assert len(llm_server.requests) == 1 and "attempts" not in single.value.details


@pytest.mark.parametrize("code", [408, 409, 500, 503, 504])
def test_transient_statuses_are_retried(llm_server, code):
    llm_server.fail(code)
    llm_server.reply("fine now")
    assert chat(messages=USER).text == "fine now" and len(llm_server.requests) == 2


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_client_errors_are_never_retried(llm_server, code):
    llm_server.fail(code, message="no")
    llm_server.reply("never asked for")
    retries = Retries()
    with pytest.raises(ModelError) as info:
        chat(messages=USER, on_retry=retries)
    assert info.value.upstream_status == code and "attempts" not in info.value.message
    assert len(llm_server.requests) == 1 and retries.calls == []


def test_out_of_quota_is_not_retried(llm_server):
    llm_server.fail(429, message="You exceeded your current quota", code="insufficient_quota")
    llm_server.reply("never asked for")
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert info.value.upstream_status == 429 and len(llm_server.requests) == 1


def test_refused_credentials_say_which_setting_and_never_the_key(llm_server, caplog):
    llm_server.fail(401, message=f"Incorrect API key provided: {llm_server.api_key}")
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert info.value.message == (f"The model server (http://127.0.0.1:{llm_server.port}) refused kf's credentials "
                                  "(HTTP 401): check KF_LLM_API_KEY.")
    assert info.value.details == {"upstream_status": 401} and len(llm_server.requests) == 1
    assert all(llm_server.api_key not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("code,message,error_code", [
    (404, "The model `nope-9` does not exist or you do not have access to it.", "model_not_found"),  # OpenAI
    (404, 'model "nope-9" not found, try pulling it first', None),  # Ollama
    (400, "Invalid model name passed in model=nope-9", None),  # LiteLLM
    (400, "no such thing", "model_not_found"),
], ids=["openai", "ollama", "litellm", "code-only"])
def test_an_unknown_model_names_the_model_and_where_to_change_it(llm_server, code, message, error_code):
    llm_server.fail(code, message=message, code=error_code)
    with pytest.raises(ModelError) as info:
        chat(messages=USER, model="nope-9")
    assert info.value.message == (f"The model server (http://127.0.0.1:{llm_server.port}) does not know the model "
                                  "'nope-9': check KF_LLM_MODEL or the model in your agent prefs.")
    assert info.value.details == {"upstream_status": code} and len(llm_server.requests) == 1


def test_a_404_that_is_not_about_a_model_points_at_the_base_url(llm_server):
    llm_server.fail(404, message="Invalid URL (POST /chat/completions)")
    with pytest.raises(ModelError) as info:
        chat(messages=USER)
    assert "KF_LLM_BASE_URL" in info.value.message and "does not know the model" not in info.value.message
    llm_server.fail(400, message="This model's maximum context length is 8192 tokens")
    with pytest.raises(ModelError) as other:
        chat(messages=USER)
    assert other.value.message.endswith("answered HTTP 400: This model's maximum context length is 8192 tokens")


def test_a_timeout_is_retried(llm_server, settings):
    settings.KF_LLM_TIMEOUT_SECONDS = 0.3
    llm_server.reply("too late", delay=10)
    llm_server.reply("in time")
    retries = Retries()
    assert chat(messages=USER, on_retry=retries).text == "in time"
    assert len(llm_server.requests) == 2 and "did not answer within 0.3 s" in retries.calls[0][2].message
    assert llm_server.requests[0].client_gone.wait(5)  # kf hung up on the slow one


def test_a_dropped_connection_is_retried(llm_server, settings):
    settings.KF_LLM_TIMEOUT_SECONDS = 5
    llm_server.hang(0.2)  # then closes without an answer
    llm_server.reply("second try")
    retries = Retries()
    assert chat(messages=USER, on_retry=retries).text == "second try"
    assert "Could not reach the model server" in retries.calls[0][2].message


def test_a_stream_that_breaks_after_a_delta_is_not_retried(llm_server):
    llm_server.reply(LONG_ANSWER, break_after=3)  # the role chunk, then two pieces of content
    llm_server.reply("never asked for")
    pieces: list[str] = []
    retries = Retries()
    with pytest.raises(ModelError) as info:
        chat(messages=USER, on_delta=pieces.append, on_retry=retries)
    assert "stream" in info.value.message and "broke off" in info.value.message
    assert info.value.status_code == 502 and retries.calls == []
    assert "".join(pieces) == LONG_ANSWER[:14] and len(llm_server.requests) == 1


def test_a_stream_that_breaks_after_a_tool_call_piece_is_not_retried(llm_server):
    llm_server.reply(None, tool_calls=[{"name": "read_file", "arguments": {"path": "a.py"}}], break_after=2)
    llm_server.reply("never asked for")
    with pytest.raises(ModelError) as info:
        chat(messages=USER, on_delta=lambda _: None)
    assert "broke off" in info.value.message and len(llm_server.requests) == 1


def test_a_stream_that_breaks_before_any_delta_is_retried(llm_server):
    llm_server.reply("lost", break_after=1)  # only the role chunk (empty content) arrives
    llm_server.reply("second try")
    pieces: list[str] = []
    result = chat(messages=USER, on_delta=pieces.append)
    assert result.text == "second try" and "".join(pieces) == "second try"
    assert len(llm_server.requests) == 2


def test_an_error_event_inside_a_stream_is_a_model_error(llm_server):
    llm_server.reply_stream({"error": {"message": f"overloaded, key {llm_server.api_key}", "type": "server_error"}})
    with pytest.raises(ModelError) as info:
        chat(messages=USER, on_delta=lambda _: None)
    assert "reported an error: overloaded, key ***" in info.value.message
    assert llm_server.api_key not in info.value.message


def test_should_stop_before_the_first_attempt_sends_nothing(llm_server):
    llm_server.reply("never asked for")
    with pytest.raises(ModelCancelled):
        chat(messages=USER, should_stop=lambda: True)
    assert llm_server.requests == []


def test_should_stop_during_a_slow_stream_closes_the_connection(llm_server):
    llm_server.reply(LONG_ANSWER, chunk_delay=0.05)
    stop = threading.Event()
    pieces: list[str] = []

    def on_delta(piece: str) -> None:
        pieces.append(piece)
        stop.set()

    with pytest.raises(ModelCancelled):
        chat(messages=USER, on_delta=on_delta, should_stop=stop.is_set)
    assert pieces == [LONG_ANSWER[:7]]  # nothing after the piece that asked for the stop
    (request,) = llm_server.requests
    assert request.client_gone.wait(5)  # the server saw kf hang up in the middle of the stream


def test_should_stop_during_a_backoff_wait_ends_the_wait(llm_server, settings):
    settings.KF_LLM_RETRY_MAX_WAIT_SECONDS = 120
    llm_server.fail(503, retry_after="60")
    llm_server.reply("never asked for")
    stop, waiting = threading.Event(), threading.Event()
    thread, outcome = run_in_thread(lambda: chat(messages=USER, should_stop=stop.is_set,
                                                 on_retry=lambda *_: waiting.set()))
    assert waiting.wait(10)
    stop.set()
    thread.join(10)  # a 60 s wait, ended within a 0.1 s slice of the stop
    assert not thread.is_alive() and isinstance(outcome.get("error"), ModelCancelled)
    assert len(llm_server.requests) == 1


def test_should_stop_while_the_server_hangs_stops_after_that_attempt_without_a_retry(llm_server, settings):
    settings.KF_LLM_TIMEOUT_SECONDS = 0.5
    llm_server.hang(60)
    llm_server.reply("never asked for")
    stop = threading.Event()
    retries = Retries()
    thread, outcome = run_in_thread(lambda: chat(messages=USER, on_delta=lambda _: None,
                                                 should_stop=stop.is_set, on_retry=retries))
    for _ in range(100):
        if llm_server.requests:
            break
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome.get("error"), ModelCancelled)
    assert len(llm_server.requests) == 1 and retries.calls == []
    assert llm_server.requests[0].client_gone.wait(5)


def test_backoff_is_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(max_attempts=6, base_seconds=1.0, max_wait_seconds=5.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        waits = [policy.wait(attempt, None) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits) and max(waits) > ceiling / 2
    assert policy.wait(1, 3.5) == 3.5 and policy.wait(1, 99) == 5.0


def test_retry_policy_reads_the_settings(settings):
    settings.KF_LLM_MAX_ATTEMPTS, settings.KF_LLM_RETRY_BASE_SECONDS = 7, 0.25
    settings.KF_LLM_RETRY_MAX_WAIT_SECONDS = 9
    assert retry_policy() == RetryPolicy(max_attempts=7, base_seconds=0.25, max_wait_seconds=9.0)
    assert retry_policy(2).max_attempts == 2 and retry_policy(0).max_attempts == 1
    del settings.KF_LLM_MAX_ATTEMPTS, settings.KF_LLM_RETRY_BASE_SECONDS, settings.KF_LLM_RETRY_MAX_WAIT_SECONDS
    assert retry_policy() == RetryPolicy(max_attempts=4, base_seconds=0.5, max_wait_seconds=30.0)
