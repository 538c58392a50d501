"""Fixtures for every test: Alice the owner, Bob a member, Vera a viewer, Oscar an outsider."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from accounts.models import Role, User, Workspace
from accounts.services import workspace_create
from kfsite.celery import app as celery_app

PASSWORD = "plum-orbit-cascade-42"

# Each xdist worker sends tasks to its own queue, consumed by its own Celery worker.
TEST_QUEUE = f"kf-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}"
celery_app.conf.task_default_queue = TEST_QUEUE


@pytest.fixture(autouse=True)
def _isolated(settings: Any, tmp_path: Path) -> None:
    """Per-test cache namespace (Redis is shared by parallel workers) and data folders."""
    caches = {name: {**conf, "KEY_PREFIX": f"t{uuid.uuid4().hex}"} for name, conf in django_settings.CACHES.items()}
    settings.CACHES = caches
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.KF_CLONE_TIMEOUT_SECONDS = int(WORKER_ENV["KF_CLONE_TIMEOUT_SECONDS"])
    settings.KF_CLONE_STALL_SECONDS = int(WORKER_ENV["KF_CLONE_STALL_SECONDS"])
    settings.KF_BASE_URL = "http://testserver"
    # Argon2 is what runs in production (see test_password_is_stored_with_argon2); a fast hasher
    # keeps the hundreds of test logins quick.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(email: str, *, name: str = "", password: str = PASSWORD, verified: bool = True) -> User:
    user = User.objects.create_user(email=email, password=password, name=name)
    EmailAddress.objects.create(user=user, email=user.email, primary=True, verified=verified)
    workspace_create(owner=user, name=f"{name or email}'s workspace", personal=True)
    return user


@pytest.fixture
def owner(db: None) -> User:
    return make_user("alice@example.com", name="Alice")


@pytest.fixture
def team(owner: User) -> Workspace:
    return workspace_create(owner=owner, name="Acme")


@pytest.fixture
def member(team: Workspace) -> User:
    user = make_user("bob@example.com", name="Bob")
    team.memberships.create(user=user, role=Role.MEMBER)
    return user


@pytest.fixture
def viewer(team: Workspace) -> User:
    user = make_user("vera@example.com", name="Vera")
    team.memberships.create(user=user, role=Role.VIEWER)
    return user


@pytest.fixture
def outsider(db: None) -> User:
    return make_user("oscar@example.com", name="Oscar")


@pytest.fixture
def client_for() -> Any:
    """A CSRF-enforcing API client signed in as `user` through the real login endpoint."""

    def sign_in(user: User, *, password: str = PASSWORD, otp: str | None = None) -> APIClient:
        client = APIClient(enforce_csrf_checks=True)
        body: dict[str, str] = {"email": user.email, "password": password}
        if otp:
            body["otp"] = otp
        response = client.post("/auth/login", body, format="json")
        assert response.status_code == 200, response.content
        client.csrf = csrf_token(client)
        return client

    return sign_in


def csrf_token(client: APIClient) -> str:
    """Sends back the CSRF cookie that login set, as a browser's JavaScript would."""
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    client.defaults["HTTP_X_CSRFTOKEN"] = token
    return token


@pytest.fixture
def anon() -> APIClient:
    return APIClient(enforce_csrf_checks=True)


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# Model call retries wait milliseconds in tests (llm/tests check the backoff itself).
MODEL_RETRY_BASE_SECONDS = 0.02

# Short clone limits for every process the tests start (the tests' own settings match them).
WORKER_ENV = {"KF_CLONE_TIMEOUT_SECONDS": "8", "KF_CLONE_STALL_SECONDS": "3"}


@pytest.fixture(scope="session")
def task_runner(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """The real thing that runs background work: with REDIS_URL a Celery worker process on this test
    database and queue; without it, the in-process thread pool (the embedded shape)."""
    if not django_settings.REDIS_URL:
        yield "threads"
        return
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.fail("the Celery worker test needs a server database (DATABASE_URL=postgres://…)")
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "KF_CELERY_QUEUE": TEST_QUEUE,
           "KF_DATA_DIR": str(django_settings.KF_DATA_DIR), **WORKER_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "kfsite", "worker", "-Q", TEST_QUEUE, "--pool", "threads",
         "-c", "2", "-l", "warning", "-n", f"{TEST_QUEUE}@%h", "--without-gossip", "--without-mingle"],
        env=env, start_new_session=True,
    )
    try:
        yield "celery"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # The worker's backends end a moment after it does; the test database can only be dropped then.
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            wait_for(lambda: (cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                             "AND pid <> pg_backend_pid()", [db["NAME"]])
                              or cursor.fetchone()[0] == 0), timeout=10)


@pytest.fixture(scope="session")
def live_server(django_db_setup: None, live_server: Any) -> Any:
    """pytest-django's live server, set up after (so torn down before) the test database: its
    thread's connection must be gone when the database is dropped."""
    return live_server


def _test_database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.postgresql":
        return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daphne:
    """A real kf web process (daphne) on the test database, as `./kf run` starts it."""

    def __init__(self, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "DATABASE_URL": _test_database_url(), "KF_CELERY_QUEUE": TEST_QUEUE,
                    "KF_DATA_DIR": str(django_settings.KF_DATA_DIR), "KF_SSE_POLL_SECONDS": "0.2",
                    **WORKER_ENV, **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "kfsite.asgi:application"],
            env=full_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        import urllib.request

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                return urllib.request.urlopen(f"{self.url}/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, timeout=30, interval=0.2)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def daphne(django_db_setup: None, task_runner: str) -> Iterator[Daphne]:
    server = Daphne()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bearer(owner: User) -> dict[str, str]:
    """An API key header for Alice, for requests to a real server."""
    from accounts.services import api_key_create

    _, raw = api_key_create(user=owner, name="test", scopes=["write"], expires_in_days=None, ip=None)
    return {"Authorization": f"Bearer {raw}"}


class SSEStream:
    """A minimal EventSource over a real HTTP connection: yields (id, event, data) as they arrive."""

    def __init__(self, url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
                 body: bytes | None = None, timeout: float = 30.0) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                          headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers  # case-insensitive

    def events(self) -> Iterator[tuple[int, str, dict]]:
        import json

        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            if not line:
                if "event" in fields:
                    yield int(fields["id"]), fields["event"], json.loads(fields.get("data", "null"))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value

    def take(self, n: int) -> list[tuple[int, str, dict]]:
        out = []
        for event in self.events():
            out.append(event)
            if len(out) == n:
                break
        return out

    def close(self) -> None:
        self.conn.close()


# --- the scripted chat model (llm/tests/scripted_server.py) -------------------------------------------

@pytest.fixture
def llm_server(settings: Any) -> Iterator[Any]:
    """A scripted OpenAI-compatible server on loopback, with KF_LLM_BASE_URL/API_KEY/MODEL pointing at
    it for this test (`server.reply(...)`, `server.fail(...)`, `server.requests`: see its module).

    Limitation: the settings are per test, in this process only. Work that runs in the Celery worker
    subprocess (task_runner on Postgres+Redis) does not see them; code under test that calls the model
    from a task must be run in-process for such a test, or the worker must be started with the URL in
    its environment."""
    from llm.tests.scripted_server import ScriptedModelServer

    server = ScriptedModelServer().start()
    settings.KF_LLM_BASE_URL = server.url
    settings.KF_LLM_API_KEY = server.api_key
    settings.KF_LLM_MODEL = server.model
    settings.KF_LLM_RETRY_BASE_SECONDS = MODEL_RETRY_BASE_SECONDS
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _session_model_server() -> Iterator[Any]:
    """One scripted model server per test process, its address put into os.environ before any Celery
    worker or daphne starts (they copy os.environ), so agent runs executed there reach it. This
    process's own settings are untouched (no model configured) until a test asks for `agent_model`."""
    from llm.tests.scripted_server import ScriptedModelServer

    server = ScriptedModelServer().start()
    os.environ.update(KF_LLM_BASE_URL=server.url, KF_LLM_API_KEY=server.api_key, KF_LLM_MODEL=server.model,
                      KF_LLM_RETRY_BASE_SECONDS=str(MODEL_RETRY_BASE_SECONDS))
    try:
        yield server
    finally:
        server.stop()



@pytest.fixture
def agent_model(_session_model_server: Any, settings: Any) -> Iterator[Any]:
    """The session's scripted model server, emptied, with this process's settings pointing at it: for
    tests whose model calls happen in the task runner (Celery worker or thread pool) or in daphne."""
    server = _session_model_server
    server.reset()
    settings.KF_LLM_BASE_URL = server.url
    settings.KF_LLM_API_KEY = server.api_key
    settings.KF_LLM_MODEL = server.model
    settings.KF_LLM_RETRY_BASE_SECONDS = MODEL_RETRY_BASE_SECONDS
    yield server
    server.reset()


@pytest.fixture(scope="session", autouse=True)
def _ssh_config_paths(tmp_path_factory: Any) -> Iterator[None]:
    """Session paths for the ssh config and known_hosts that shell/tests' `sshd` fixture writes, put
    into os.environ before any test starts a Celery worker or daphne (they copy os.environ), so those
    processes read the same files as this one. Until an ssh test writes them they do not exist, which
    kf reads as "no ssh hosts"."""
    base = tmp_path_factory.mktemp("ssh")
    saved = {name: os.environ.get(name) for name in ("KF_SSH_CONFIG", "KF_SSH_KNOWN_HOSTS")}
    os.environ["KF_SSH_CONFIG"] = str(base / "config")
    os.environ["KF_SSH_KNOWN_HOSTS"] = str(base / "known_hosts")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
