"""The /receipts page (Django test client) and the read-only admin."""

import re

import pytest
from django.urls import reverse

from accounts.models import User
from receipts.models import Receipt, ReceiptLog
from receipts.services import receipt_append
from receipts.signing import signing_key
from receipts.tests.conftest import make_project, run_facts

pytestmark = pytest.mark.django_db


@pytest.fixture
def receipts(team, owner, tmp_path, signing_key_b64) -> list[Receipt]:
    project = make_project(tmp_path / "team-app", team, owner)
    return [receipt_append(facts=run_facts(project, user=owner, status=s)) for s in ("succeeded", "failed", "cancelled")]


def test_the_page_shows_the_log_the_head_and_the_actions(receipts, team, viewer, client_for):
    html = client_for(viewer).get(f"/receipts?ws_id={team.pk}").content.decode()
    assert re.search(r'<a href="/receipts"\s+aria-current="page">Receipts</a>', html)
    assert f'data-ws="{team.pk}"' in html and "/static/receipts.js" in html
    rows = re.findall(r'data-test="receipt-row" data-run-id="([^"]+)" data-seq="(\d+)"', html)
    assert rows == [(r.run_id, str(r.seq)) for r in reversed(receipts)]
    assert f'{receipts[2].hash[:12]}…' in html and 'data-action="receipt-verify"' in html
    assert f'href="/api/receipts/{receipts[0].run_id}/bundle"' in html
    assert 'data-test="head-size">3<' in html and receipts[2].root_hash in html
    assert signing_key().public_b64 in html and signing_key().key_id in html
    assert ">failed<" in html and ">cancelled<" in html


def test_the_personal_workspace_comes_first_and_an_empty_log_says_so(receipts, owner, team, client_for):
    html = client_for(owner).get("/receipts").content.decode()
    assert 'data-test="receipts-empty"' in html and 'data-test="ws-picker"' in html
    assert f'value="{team.pk}"' in html and 'data-test="head-size">0<' in html


def test_paging_through_a_long_log(receipts, team, owner, client_for, monkeypatch):
    from receipts import web

    monkeypatch.setattr(web, "PAGE", 2)
    client = client_for(owner)
    html = client.get(f"/receipts?ws_id={team.pk}").content.decode()
    assert re.findall(r'data-seq="(\d+)"', html) == ["3", "2"]
    cursor = re.search(r'cursor=([^"&]+)" data-test="receipts-older"', html).group(1)
    html = client.get(f"/receipts?ws_id={team.pk}&cursor={cursor}").content.decode()
    assert re.findall(r'data-seq="(\d+)"', html) == ["1"] and 'data-test="receipts-newest"' in html
    assert 'data-test="receipts-error"' in client.get(f"/receipts?ws_id={team.pk}&cursor=zz").content.decode()


def test_outsiders_get_not_found_and_strangers_sign_in(receipts, team, outsider, client_for, client):
    assert client_for(outsider).get(f"/receipts?ws_id={team.pk}").status_code == 404
    response = client.get("/receipts")
    assert response.status_code == 302 and response["Location"].startswith("/login")


@pytest.fixture
def admin_client(client, db):
    operator = User.objects.create_superuser(email="ops@example.com", password="ops-pass-phrase-42")
    client.force_login(operator)
    return client


def test_the_admin_shows_receipts_and_heads_read_only(receipts, admin_client):
    receipt = receipts[0]
    for url in (reverse("admin:receipts_receipt_changelist") + "?q=" + receipt.run_id,
                reverse("admin:receipts_receiptlog_changelist")):
        assert admin_client.get(url).status_code == 200
    page = admin_client.get(reverse("admin:receipts_receipt_change", args=[receipt.pk])).content.decode()
    assert receipt.run_id in page and "task_sha256" in page and receipt.hash in page
    log = ReceiptLog.objects.get()
    page = admin_client.get(reverse("admin:receipts_receiptlog_change", args=[log.pk])).content.decode()
    assert signing_key().key_id in page and log.root_hash in page
    assert admin_client.get(reverse("admin:receipts_receipt_add")).status_code == 403
    response = admin_client.post(reverse("admin:receipts_receipt_change", args=[receipt.pk]), {"seq": 9})
    assert response.status_code == 403
    assert admin_client.post(reverse("admin:receipts_receipt_delete", args=[receipt.pk]), {"post": "yes"}).status_code == 403
    assert Receipt.objects.get(pk=receipt.pk).seq == 1
