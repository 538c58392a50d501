"""The server's ssh config as `ssh-hosts` reads it: OpenSSH's rules on files written here, then the
endpoint (roles, missing file) on the session's real config."""

import getpass
from pathlib import Path

import pytest

from shell.ssh import SshHost, parse_ssh_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def by_alias(hosts: list[SshHost]) -> dict[str, SshHost]:
    return {h.alias: h for h in hosts}


def test_parse_lists_one_item_per_name_and_leaves_out_patterns(tmp_path):
    config = write(tmp_path / "config", """
# a comment
Host web web-alias
    HostName 10.0.0.5
    User deploy
    Port 2222

Host *.internal db-?? !bastion
    User nobody

Host db
  Hostname db.example.com
""")
    hosts = parse_ssh_config(config)
    assert [h.alias for h in hosts] == ["web", "web-alias", "db"]
    web, alias, db = hosts
    assert (web.hostname, web.user, web.port) == ("10.0.0.5", "deploy", 2222)
    assert alias == SshHost(alias="web-alias", hostname="10.0.0.5", user="deploy", port=2222)
    assert (db.hostname, db.user, db.port) == ("db.example.com", getpass.getuser(), 22)


def test_parse_first_value_wins_and_wildcard_blocks_apply(tmp_path):
    config = write(tmp_path / "config", """
Host app
  User first
Host app
  User second
  Port 2200
Host *
  User fallback
  Port 22
  IdentityFile ~/.ssh/shared_key
Host other
  HostName %h.example.org
  IdentityFile /keys/%r-%h
""")
    app, other = parse_ssh_config(config)
    assert (app.user, app.port, app.hostname) == ("first", 2200, "app")
    assert app.identity_files == (str(Path.home() / ".ssh/shared_key"),)
    # `Host *` came first for other's User, so it wins; IdentityFile accumulates in order.
    assert (other.user, other.hostname) == ("fallback", "other.example.org")
    assert other.identity_files == (str(Path.home() / ".ssh/shared_key"), "/keys/fallback-other.example.org")


def test_parse_negation_excludes_a_host_from_a_block(tmp_path):
    config = write(tmp_path / "config", """
Host bastion.internal api.internal
  HostName 192.0.2.1
Host *.internal !bastion.internal
  User svc
""")
    hosts = by_alias(parse_ssh_config(config))
    assert hosts["api.internal"].user == "svc"
    assert hosts["bastion.internal"].user == getpass.getuser()


def test_parse_follows_include_relative_globs_and_ignores_match(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "10-a.conf", "Host inc-a\n  HostName 198.51.100.1\n")
    write(tmp_path / "conf.d" / "20-b.conf", "Host inc-b\n  Port 2022\n")
    config = write(tmp_path / "config", """
Include conf.d/*.conf
Host main
  HostName main.example.com
Match user root
  Port 9999
Host inc-a
  User late
""")
    hosts = by_alias(parse_ssh_config(config))
    assert list(hosts) == ["inc-a", "inc-b", "main"]
    assert hosts["inc-a"].hostname == "198.51.100.1" and hosts["inc-a"].user == "late"
    assert hosts["inc-b"].port == 2022
    assert hosts["main"].port == 22  # the Match block's options are not applied


def test_parse_include_loops_stop(tmp_path):
    write(tmp_path / "config", "Include config\nHost looped\n")
    assert [h.alias for h in parse_ssh_config(tmp_path / "config")] == ["looped"]


def test_parse_key_equals_value_quotes_and_bad_values(tmp_path):
    config = write(tmp_path / "config", """
Host=eq
  HostName=eq.example.com
  Port=notaport
Host "quoted name"
  User "with space"
Host bad
  User "unbalanced
""")
    hosts = by_alias(parse_ssh_config(config))
    assert hosts["eq"].hostname == "eq.example.com" and hosts["eq"].port == 22
    assert hosts["quoted name"].user == "with space"
    assert hosts["bad"].user == getpass.getuser()


def test_parse_missing_file_is_no_hosts(tmp_path):
    assert parse_ssh_config(tmp_path / "nope") == []
    assert parse_ssh_config(tmp_path) == []  # a folder


# --- GET /api/shell/ssh-hosts -------------------------------------------------------------------------

pytestmark = pytest.mark.django_db


def test_ssh_hosts_lists_the_servers_config(ssh_settings, owner, client_for):
    response = client_for(owner).get("/api/shell/ssh-hosts")
    assert response.status_code == 200
    items = {i["alias"]: i for i in response.json()["items"]}
    assert {"kf-test", "kf-test-2", "kf-test-unknown", "kf-test-changed", "kf-test-nokey"} == set(items)
    assert items["kf-test"] == {"alias": "kf-test", "hostname": "127.0.0.1", "user": ssh_settings.user,
                                "port": ssh_settings.port}
    assert items["kf-test-2"]["hostname"] == "127.0.0.1"


def test_ssh_hosts_without_a_config_file_is_empty(owner, client_for, settings, tmp_path):
    settings.KF_SSH_CONFIG = str(tmp_path / "missing")
    response = client_for(owner).get("/api/shell/ssh-hosts")
    assert response.status_code == 200 and response.json() == {"items": []}


def test_ssh_hosts_roles(ssh_settings, team, member, viewer, outsider, client_for, anon):
    assert client_for(member).get(f"/api/shell/ssh-hosts?ws_id={team.pk}").status_code == 200
    forbidden = client_for(viewer).get(f"/api/shell/ssh-hosts?ws_id={team.pk}")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    hidden = client_for(outsider).get(f"/api/shell/ssh-hosts?ws_id={team.pk}")
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert anon.get("/api/shell/ssh-hosts").status_code == 401
