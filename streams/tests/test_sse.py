"""The one event log and SSE streamer, through a real HTTP connection to a running daphne."""

import threading
import time

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import Workspace
from conftest import Daphne, SSEStream
from streams.models import Event, Job
from streams.services import event_append, job_create, job_finish, job_start

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job(owner) -> Job:
    workspace = Workspace.objects.get(memberships__user=owner, personal=True)
    job = job_create(kind="test", owner=owner, workspace=workspace)
    job_start(job_id=job.pk)  # seq 1: status running
    return job


def append(job: Job, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        event_append(job_id=job.pk, type="progress", data={"i": i})


def later(delay: float, work) -> None:
    """Run `work` on another thread (a stand-in worker), closing its database connection after."""
    def run() -> None:
        try:
            work()
        finally:
            connection.close()

    threading.Timer(delay, run).start()


def stream(daphne: Daphne, job: Job, bearer: dict, **headers: str) -> SSEStream:
    s = SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream", headers={**bearer, **headers})
    assert s.status == 200 and s.headers["Content-Type"].startswith("text/event-stream")
    return s


def test_seq_is_dense_and_written_before_it_is_sent(job):
    append(job, 5)
    def concurrent_writer() -> None:
        try:
            append(job, 5)
        finally:
            connection.close()

    threads = [threading.Thread(target=concurrent_writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = list(Event.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert Job.objects.get(pk=job.pk).last_seq == seqs[-1]


def test_reconnect_mid_job_with_last_event_id_gets_every_event_exactly_once(daphne, job, bearer):
    append(job, 4)  # seqs 2..5
    first = stream(daphne, job, bearer)
    got = first.take(5)
    first.close()  # the client goes away mid-job…
    assert [seq for seq, _, _ in got] == [1, 2, 3, 4, 5]
    append(job, 3, start=4)  # seqs 6..8, written while nobody listens
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING  # …and the job goes on

    second = stream(daphne, job, bearer, **{"Last-Event-ID": "5"})
    later(0.5, lambda: (append(job, 2, start=7), job_finish(job_id=job.pk, status="succeeded", result={"n": 9})))
    rest = list(second.events())
    second.close()
    assert [seq for seq, _, _ in rest] == list(range(6, 12))
    assert [d.get("i") for _, t, d in rest if t == "progress"] == [4, 5, 6, 7, 8]
    assert rest[-1][1:] == ("end", {"status": "succeeded", "n": 9})


def test_cursor_query_parameter_works_like_last_event_id(daphne, job, bearer):
    append(job, 3)
    job_finish(job_id=job.pk, status="succeeded")
    s = SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream?cursor=2", headers=bearer)
    assert [seq for seq, _, _ in s.events()] == [3, 4, 5]


def test_follow_a_finished_job_replays_it_and_ends(daphne, job, bearer):
    append(job, 3)
    job_finish(job_id=job.pk, status="failed", result={"error": "boom"})
    events = list(stream(daphne, job, bearer).events())
    assert [seq for seq, _, _ in events] == [1, 2, 3, 4, 5]
    assert events[-1][1:] == ("end", {"status": "failed", "error": "boom"})
    past_the_end = SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream?cursor=5", headers=bearer)
    assert list(past_the_end.events()) == []  # closes at once instead of hanging


def test_two_followers_at_once_get_the_same_events(daphne, job, bearer):
    a, b = stream(daphne, job, bearer), stream(daphne, job, bearer)
    later(0.3, lambda: (append(job, 5), job_finish(job_id=job.pk, status="succeeded")))
    got_a, got_b = list(a.events()), list(b.events())
    assert got_a == got_b
    assert [seq for seq, _, _ in got_a] == list(range(1, 8))


def test_heartbeat_comments_keep_an_idle_stream_alive(job, bearer):
    server = Daphne(KF_SSE_HEARTBEAT_SECONDS="0.3")
    try:
        s = SSEStream(f"{server.url}/api/jobs/{job.pk}/stream?cursor=1", headers=bearer, timeout=10)
        lines = [s.response.readline() for _ in range(3)]
        s.close()
    finally:
        server.stop()
    assert b": heartbeat\n" in lines


def test_follower_on_another_daphne_process_is_woken_through_the_channel_layer(job, bearer):
    if not settings.REDIS_URL:
        pytest.skip("the scale-out shape: several daphne processes share a Redis channel layer")
    # With polling effectively off, only a channel-layer wake-up can deliver the live events.
    servers = [Daphne(KF_SSE_POLL_SECONDS="3600"), Daphne(KF_SSE_POLL_SECONDS="3600")]
    try:
        followers = [SSEStream(f"{s.url}/api/jobs/{job.pk}/stream?cursor=1", headers=bearer) for s in servers]
        time.sleep(0.5)  # both are now waiting on the layer
        append(job, 2)
        job_finish(job_id=job.pk, status="succeeded")
        results = [[seq for seq, _, _ in f.events()] for f in followers]
    finally:
        for s in servers:
            s.stop()
    assert results == [[2, 3, 4], [2, 3, 4]]


def test_disconnecting_does_not_stop_the_job(daphne, job, bearer):
    s = stream(daphne, job, bearer)
    s.take(1)
    s.close()
    time.sleep(0.3)
    append(job, 1)
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING


def test_outsider_cannot_follow_or_cancel(daphne, job, client_for, outsider):
    from accounts.services import api_key_create

    _, raw = api_key_create(user=outsider, name="x", scopes=["write"], expires_in_days=None, ip=None)
    s = SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream", headers={"Authorization": f"Bearer {raw}"})
    assert s.status == 404
    client = client_for(outsider)
    assert client.post(f"/api/jobs/{job.pk}/cancel").status_code == 404
    assert client.get(f"/api/jobs/{job.pk}").status_code == 404


def test_stream_needs_credentials_and_a_sane_cursor(daphne, job, bearer):
    assert SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream").status == 401
    assert SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream?cursor=abc", headers=bearer).status == 400
    assert SSEStream(f"{daphne.url}/api/jobs/{job.pk}/stream?cursor=-1", headers=bearer).status == 400


def test_cancel_of_a_queued_job_ends_it(owner, client_for):
    workspace = Workspace.objects.get(memberships__user=owner, personal=True)
    queued = job_create(kind="test", owner=owner, workspace=workspace)
    response = client_for(owner).post(f"/api/jobs/{queued.pk}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert list(Event.objects.filter(job=queued).values_list("type", flat=True)) == ["end"]
    assert job_start(job_id=queued.pk) is False  # a worker picking it up later does not run it


def test_viewer_cannot_cancel_a_team_job(team, owner, viewer, member, client_for):
    queued = job_create(kind="test", owner=owner, workspace=team)
    assert client_for(viewer).get(f"/api/jobs/{queued.pk}").status_code == 200
    assert client_for(viewer).post(f"/api/jobs/{queued.pk}/cancel").status_code == 403
    assert client_for(member).post(f"/api/jobs/{queued.pk}/cancel").status_code == 202


def test_many_followers_at_once_hold_no_thread_each(daphne, job, bearer):
    # More followers than daphne has threads for sync code: waiting followers must not occupy one.
    followers = [stream(daphne, job, bearer) for _ in range(40)]
    later(0.5, lambda: (append(job, 3), job_finish(job_id=job.pk, status="succeeded")))
    results = [[seq for seq, _, _ in f.events()] for f in followers]
    assert results == [[1, 2, 3, 4, 5]] * 40
