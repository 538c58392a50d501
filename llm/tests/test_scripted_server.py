"""The scripted model server itself: what other tests rely on (reset, another process, stop while hanging)."""

import json
import subprocess
import sys
import threading
import time

from llm.tests.scripted_server import ScriptedModelServer

# A separate Python process (as a Celery worker would be) asking the server over plain HTTP; it prints
# {"status", "retry_after", "body"} as JSON.
CLIENT = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1] + "/chat/completions", method="POST",
                                 data=json.dumps({"model": "m", "messages": []}).encode(),
                                 headers={"Content-Type": "application/json"})
try:
    response = urllib.request.urlopen(request, timeout=30)
except urllib.error.HTTPError as error:
    response = error
print(json.dumps({"status": response.status, "retry_after": response.headers["Retry-After"],
                  "body": json.load(response)}))
"""


def ask_from_another_process(url: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CLIENT, url], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def test_another_process_can_use_the_server(llm_server):
    llm_server.reply("hello from the scripted model")
    answer = ask_from_another_process(llm_server.url)
    assert answer["status"] == 200
    assert answer["body"]["choices"][0]["message"]["content"] == "hello from the scripted model"
    (request,) = llm_server.requests
    assert request.body == {"model": "m", "messages": []} and not request.client_gone.is_set()


def test_fail_sends_retry_after_and_the_error_code(llm_server):
    llm_server.fail(429, message="slow down", retry_after="3", code="rate_limit_exceeded")
    answer = ask_from_another_process(llm_server.url)
    assert answer["status"] == 429 and answer["retry_after"] == "3"
    assert answer["body"]["error"] == {"message": "slow down", "type": "invalid_request_error",
                                       "code": "rate_limit_exceeded"}


def test_reset_forgets_steps_requests_and_a_changed_model(llm_server):
    llm_server.reply("first")
    llm_server.reply("queued, then forgotten")
    llm_server.model = "another-model"
    assert ask_from_another_process(llm_server.url)["body"]["model"] == "another-model"
    assert len(llm_server.requests) == 1 and llm_server.pending() == 1
    llm_server.reset()
    assert llm_server.requests == [] and llm_server.pending() == 0 and llm_server.model == "scripted-model-1"
    assert ask_from_another_process(llm_server.url)["status"] == 500  # nothing queued any more


def test_stop_returns_while_a_request_hangs():
    server = ScriptedModelServer().start()
    server.hang(600)
    client = subprocess.Popen([sys.executable, "-c", CLIENT, server.url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if server.requests:
                break
            time.sleep(0.05)
        assert server.requests and server.pending() == 0  # the hang step is being served
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        stopper.join(10)  # a 600 s hang must not hold stop() up
        assert not stopper.is_alive()
        _, stderr = client.communicate(timeout=20)
        assert client.returncode != 0 and "RemoteDisconnected" in stderr  # closed without an answer
    finally:
        client.kill()
        client.wait()
