import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from accounts import apikeys
from projects import scanners
from projects.scanners import (
    FindingRow,
    ScannerError,
    fingerprint,
    ruff_findings,
    scan_text,
)

# Secrets are assembled at run time, so that kf's scan of this file finds none.
ALNUM = "a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuVwXyZ" * 4
PEM_BODY = "MIIEowIBAAKCAQEA" + ALNUM[:48]
RANDOM = "q8Zr2LmX9vK4"
HEX = "5f4dcc3b5aa765d61d8327deb882cf99"


def secret_lines() -> list[tuple[str, str, str]]:
    """(rule, line of code, the secret in it)."""
    body = "kf_" + (ALNUM * 2)[:52]  # deterministic, so parallel test workers collect the same ids
    kf_key = body + apikeys._checksum(body)
    cases = {
        "secret-aws-access-key-id": "AKIA" + "Q3ZX7RTY2WPL5KMN",
        "secret-github-token": "ghp_" + ALNUM[:36],
        "secret-gitlab-token": "glpat-" + ALNUM[:20],
        "secret-slack-token": "xoxb-" + "17653672481-19874698323-" + ALNUM[:24],
        "secret-stripe-key": "sk_live_" + ALNUM[:24],
        "secret-openai-key": "sk-" + ALNUM[:48],
        "secret-anthropic-key": "sk-ant-api03-" + ALNUM[:80] + "-AA",
        "secret-google-api-key": "AIza" + ALNUM[:35],
        "secret-jwt": "eyJ" + "hbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "secret-kf-api-key": kf_key,
    }
    lines = [(rule, f'value = "{secret}"', secret) for rule, secret in cases.items()]
    lines += [
        ("secret-github-token", f"GITHUB_TOKEN={'gho_' + ALNUM[1:37]}", "gho_" + ALNUM[1:37]),
        ("secret-github-token", f"url = 'https://{'github_pat_' + ALNUM[:82]}@github.com'", "github_pat_" + ALNUM[:82]),
        ("secret-openai-key", f"OPENAI_API_KEY = '{'sk-proj-' + ALNUM[:120]}'", "sk-proj-" + ALNUM[:120]),
        ("secret-stripe-key", f"key: {'rk_live_' + ALNUM[:30]}", "rk_live_" + ALNUM[:30]),
        ("secret-aws-access-key-id", f"id = {'ASIA' + 'Q3ZX7RTY2WPL5KMN'}", "ASIA" + "Q3ZX7RTY2WPL5KMN"),
        ("secret-aws-secret-access-key", f"aws_secret_access_key = {ALNUM[:38] + '/+'}", ALNUM[:38] + "/+"),
        ("secret-aws-secret-access-key", f'  AWS_SECRET_ACCESS_KEY: "{ALNUM[2:42]}"', ALNUM[2:42]),
        ("secret-private-key", "-----BEGIN RSA " + f"PRIVATE KEY-----\n{PEM_BODY}\n", PEM_BODY),
        ("secret-private-key", "key = b'''-----BEGIN OPENSSH " + f"PRIVATE KEY-----\n{PEM_BODY}'''", PEM_BODY),
        ("secret-private-key", '"key": "-----BEGIN ' + f'PRIVATE KEY-----\\n{PEM_BODY}\\n"', PEM_BODY),
        ("secret-private-key", "-----BEGIN PGP " + f"PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n{PEM_BODY}", PEM_BODY),
        ("secret-private-key", "-----BEGIN RSA " + "PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
         f"DEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n{PEM_BODY}", PEM_BODY),
    ]
    return lines


@pytest.mark.parametrize(("rule", "line", "secret"), secret_lines(), ids=lambda value: str(value)[:40])
def test_scan_text_finds_secret(rule: str, line: str, secret: str) -> None:
    [row] = scan_text("conf/settings.py", f"import os\n\n{line}\n")
    assert (row.rule, row.severity, row.path, row.line) == (rule, "error", "conf/settings.py", 3)
    assert secret not in row.message
    assert secret[4:12] not in row.message


@pytest.mark.parametrize("line", [
    "AWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'",  # AWS's documented example
    "aws_secret_access_key = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'",
    "token = 'ghp_' + suffix",
    "short = 'ghp_abc'",
    "x = 'kf_" + "a" * 58 + "'",  # right shape, wrong checksum
    "-----BEGIN PUBLIC KEY-----\n" + PEM_BODY,
    "-----BEGIN CERTIFICATE-----\n" + PEM_BODY,
    'SSH_BEGIN = "-----BEGIN OPENSSH ' + 'PRIVATE KEY-----"',  # a parser's constant: no key follows
    "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEowEXAMPLE" + ALNUM[:40],
    "x = 'xghp_" + ALNUM[:36] + "'",  # not at a word's start
    "x = 'ghp_" + ALNUM[:40] + "'",  # too long
    "x = 'pk_live_" + ALNUM[:24] + "'",  # Stripe's publishable keys are public
    "x = 'sk_test_" + ALNUM[:24] + "'",
    "css = 'task-runner-long-hyphenated-class-name'",
    "risk-assessment-summary-of-the-quarterly-report",
])
def test_scan_text_ignores_look_alikes(line: str) -> None:
    assert scan_text("a.py", line + "\n") == []


@pytest.mark.parametrize(("path", "line", "name"), [
    ("settings.py", f'DB_PASSWORD = "{RANDOM}"', "DB_PASSWORD"),
    ("settings.py", f'self.api_key = "{RANDOM}"', "self.api_key"),
    ("settings.py", f'password: str = "{RANDOM}"', "password"),
    ("client.py", f'connect(host="db", password="{RANDOM}")', "password"),
    ("config.json", f'  "apiKey": "{HEX}",', "apiKey"),
    ("app.js", f"const authToken = `{RANDOM}`;", "authToken"),
    ("deploy.yml", f"  client_secret: '{RANDOM}'", "client_secret"),
    (".env", f"SECRET_KEY={RANDOM}", "SECRET_KEY"),
    ("deploy/prod.env", f"export ACCESS_TOKEN={HEX}", "ACCESS_TOKEN"),
    ("conf/app.yaml", f"  password: {RANDOM}", "password"),
])
def test_scan_text_finds_generic_secret_assignment(path: str, line: str, name: str) -> None:
    [row] = scan_text(path, line + "\n")
    assert (row.rule, row.severity, row.line) == ("secret-assignment", "warning", 1)
    assert name in row.message
    assert RANDOM not in row.message and HEX[:8] not in row.message


@pytest.mark.parametrize(("path", "line"), [
    ("settings.py", 'PASSWORD = "changeme"'),
    ("settings.py", 'PASSWORD = "changeme123"'),
    ("settings.py", 'API_KEY = "xxxxxxxxxxxxxxxx"'),
    ("settings.py", 'API_KEY = "************"'),
    ("settings.py", 'API_KEY = "<your-api-key>"'),
    ("settings.py", 'API_KEY = "your-api-key-1234"'),
    ("settings.py", 'SECRET_KEY = "${SECRET_KEY}"'),
    ("settings.py", 'token = "{{ secrets.TOKEN_42 }}"'),
    ("settings.py", 'password = "%(password)s1234"'),
    ("settings.py", 'DB_PASSWORD = os.environ["DB_PASSWORD"]'),
    ("settings.py", 'DB_PASSWORD = os.getenv("DB_PASSWORD", "")'),
    ("settings.py", 'token = request.headers.get("X-Token")'),
    ("settings.py", 'TOKEN_NAME = "access_token"'),
    ("settings.py", 'RESET_TOKEN = "PasswordResetToken"'),
    ("settings.py", 'PRIVATE_KEY = "/etc/ssl/private/site2.pem"'),
    ("settings.py", 'API_KEY = "test-key-12345678"'),
    ("settings.py", 'api_key = "short1"'),
    ("settings.py", 'api_key = "abab1212abab1212"'),  # letters and digits, but low entropy
    ("settings.py", f'max_tokens = "{RANDOM}"'),  # not a secret's name
    ("schema.py", f'"AWS::SecretsManager::Secret": "{HEX[:16]}",'),  # a type name, not a variable
    ("settings.py", f'if password == "{RANDOM}":'),  # a comparison
    ("settings.py", f"SECRET_KEY = {RANDOM}"),  # bare values only count in configuration files
    (".env", "SECRET_KEY=${SECRET_KEY}"),
    ("deploy.yml", "  password: ${{ secrets.DB_PASSWORD }}"),
])
def test_scan_text_ignores_placeholders(path: str, line: str) -> None:
    assert scan_text(path, line + "\n") == []


def test_scan_text_reports_a_known_key_once() -> None:
    [row] = scan_text("a.py", f'api_key = "{"ghp_" + ALNUM[:36]}"\n')
    assert row.rule == "secret-github-token"


def test_scan_text_two_secrets_on_one_line() -> None:
    token = "ghp_" + ALNUM[:36]
    rows = scan_text("a.py", f'pair = ("{token}", "{token}")\n')
    assert [row.rule for row in rows] == ["secret-github-token", "secret-github-token"]
    assert rows[0].fingerprint != rows[1].fingerprint


CONFLICT = ["<<<<<<< HEAD", "x = 1", "=======", "x = 2", ">>>>>>> feature/login"]


def test_scan_text_merge_conflict_one_block() -> None:
    [row] = scan_text("app.py", "\n".join(["import os", *CONFLICT, "print(x)"]))
    assert (row.rule, row.severity, row.line) == ("merge-conflict", "error", 2)
    assert "2–6" in row.message


def test_scan_text_merge_conflict_two_blocks() -> None:
    rows = scan_text("app.py", "\n".join([*CONFLICT, "between = True", *CONFLICT]))
    assert [(row.rule, row.line) for row in rows] == [("merge-conflict", 1), ("merge-conflict", 7)]
    assert rows[0].fingerprint != rows[1].fingerprint


def test_scan_text_merge_conflict_diff3_style() -> None:
    lines = ["<<<<<<< ours", "a", "||||||| base", "b", "=======", "c", ">>>>>>> theirs"]
    assert [row.line for row in scan_text("a.txt", "\n".join(lines))] == [1]


@pytest.mark.parametrize(("path", "lines"), [
    ("README.md", ["Title", "=======", "", "Text."]),
    ("docs/index.rst", ["=======", "Title", "=======", "", "Text."]),
    ("notes.txt", ["<<<<<<< not followed by a separator", "text", ">>>>>>> end"]),
    ("notes.txt", [">>>>>>> quoted", "=======", "<<<<<<< reversed"]),
    ("a.py", ["x = '<<<<<<< HEAD'", "=======", ">>>>>>> other"]),
])
def test_scan_text_no_merge_conflict(path: str, lines: list[str]) -> None:
    assert [row for row in scan_text(path, "\n".join(lines)) if row.rule == "merge-conflict"] == []


@pytest.mark.parametrize(("line", "message"), [
    ("x = 1  # TODO: handle the empty case", "TODO: handle the empty case"),
    ("# FIXME(alice) breaks on Windows", "FIXME(alice) breaks on Windows"),
    ("    // XXX this is wrong", "XXX this is wrong"),
    ("/* HACK: until upstream fixes it */", "HACK: until upstream fixes it"),
    (" * TODO document the flags", "TODO document the flags"),
    ("<!-- TODO: screenshot -->", "TODO: screenshot"),
    ("-- TODO index this column", "TODO index this column"),
    ('    """TODO: explain."""', "TODO: explain."),
    ("#TODO", "TODO"),
    ("TODO: write the docs", "TODO: write the docs"),
    ("- TODO: a list item", "TODO: a list item"),
])
def test_scan_text_todo(line: str, message: str) -> None:
    [row] = scan_text("a.py", f"a = 1\n{line}\n")
    assert (row.rule, row.severity, row.line, row.message) == ("todo", "info", 2, message)


@pytest.mark.parametrize("line", [
    "TODO_ITEMS = []",
    "the TODO list is long",
    "TODO list",
    "phone = 'XXX-XXX-XXXX'",
    "# the phone is XXX-XXX-XXXX",
    "# todo: lower case is prose",
    "# TODOS are elsewhere",
    "x = todo()",
])
def test_scan_text_not_todo(line: str) -> None:
    assert scan_text("a.py", line + "\n") == []


def test_scan_text_todo_message_capped() -> None:
    [row] = scan_text("a.py", "# TODO " + "word " * 200)
    assert len(row.message) == scanners.TODO_MESSAGE_MAX
    assert row.message.endswith("…")


def test_scan_text_long_lines_only_exact_key_formats() -> None:
    token = "ghp_" + ALNUM[:36]
    line = "var a=1;" * 300 + f'var token="{token}";var password="{RANDOM}";// TODO: minified'
    assert [row.rule for row in scan_text("dist/app.min.js", line)] == ["secret-github-token"]


@pytest.mark.parametrize("text", [
    "eyJ" + "a" * 20 + "." + "eyJ" * 300_000,  # was quadratic: each `eyJ` rescanned the run to its end
    "-----BEGIN PRIVATE KEY-----" + "Ab-c: d\\" * 100_000,
    "github_pat_" * 100_000,
    "xoxb-" + "1" * 1_000_000,
    ("token = '" + "a1" * 900 + "'\n") * 500,
])
def test_scan_text_pathological_input_is_linear(text: str) -> None:
    started = time.monotonic()
    scan_text("dist/bundle.js", text)
    assert time.monotonic() - started < 5


def test_scan_text_crlf_and_empty() -> None:
    assert scan_text("a.py", "") == []
    rows = scan_text("a.py", "a = 1\r\n# TODO: crlf\r\nb = 2\r\n")
    assert [(row.line, row.message) for row in rows] == [(2, "TODO: crlf")]


TEXT = "import os\n\ndef f():\n    # TODO: later\n    return 1\n\n# TODO: later\n"


def test_fingerprint_survives_lines_inserted_above() -> None:
    before = scan_text("pkg/mod.py", TEXT)
    after = scan_text("pkg/mod.py", "# header\n" * 5 + TEXT)
    assert [row.line + 5 for row in before] == [row.line for row in after]
    assert [row.fingerprint for row in before] == [row.fingerprint for row in after]


def test_fingerprint_survives_reindentation() -> None:
    before = scan_text("pkg/mod.py", "# TODO: later\n")
    after = scan_text("pkg/mod.py", "if True:\n        #   TODO:   later\n")
    assert before[0].fingerprint == after[0].fingerprint


def test_fingerprint_differs_for_identical_lines_in_one_file() -> None:
    rows = scan_text("pkg/mod.py", TEXT)
    assert [row.message for row in rows] == ["TODO: later", "TODO: later"]
    assert rows[0].fingerprint != rows[1].fingerprint


def test_fingerprint_differs_across_files_and_rules() -> None:
    [a] = scan_text("a.py", "# TODO: later\n")
    [b] = scan_text("b.py", "# TODO: later\n")
    assert a.fingerprint != b.fingerprint
    assert fingerprint("todo", "a.py", "# TODO: later", 0) == a.fingerprint
    assert fingerprint("todo", "a.py", "  # TODO:  later ", 0) == a.fingerprint
    assert fingerprint("merge-conflict", "a.py", "# TODO: later", 0) != a.fingerprint
    assert fingerprint("todo", "a.py", "# TODO: later", 1) != a.fingerprint
    assert len(a.fingerprint) == 64


# --- ruff ------------------------------------------------------------------------------------------

PY_FILES = {
    "pkg/has space.py": "import os\nimport sys, json\n\n\ndef f():\n    return undefined_name\n",
    "broken.py": "x = 1\ndef f(:\n    pass\n",
    "-dash.py": "import os\n",
    "stubs/api.pyi": "from typing import List\ndef g() -> int: ...\n",
    "modern.py": "match 1:\n    case 1:\n        pass\ntype Alias = int\n",
    "clean.py": "import os\n\nprint(os.sep)\nprint(unknown)  # noqa: F821\n",
    "notes.md": "import os\nundefined_name\n",
    "script.sh": "import os\n",
}


def write(root: Path, files: dict[str, str]) -> list[str]:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return list(files)


def summary(rows: list[FindingRow]) -> list[tuple[str, int, str, str]]:
    return [(row.path, row.line, row.rule, row.severity) for row in rows]


@pytest.fixture
def spy_run(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    commands: list[list[str]] = []
    real_run = subprocess.run

    def run(command: list[str], *args: Any, **kwargs: Any) -> Any:
        commands.append(command)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(scanners.subprocess, "run", run)
    return commands


def test_ruff_findings_codes_and_lines(tmp_path: Path, spy_run: list[list[str]]) -> None:
    paths = write(tmp_path, PY_FILES)
    rows = ruff_findings(tmp_path, paths)
    assert summary(rows) == [
        ("pkg/has space.py", 1, "ruff-F401", "warning"),
        ("pkg/has space.py", 2, "ruff-F401", "warning"),
        ("pkg/has space.py", 2, "ruff-F401", "warning"),
        ("pkg/has space.py", 6, "ruff-F821", "error"),
        ("broken.py", 2, "ruff-invalid-syntax", "error"),  # only the first syntax error of the file
        ("-dash.py", 1, "ruff-F401", "warning"),
        ("stubs/api.pyi", 1, "ruff-F401", "warning"),
    ]
    assert rows[3].message == "Undefined name `undefined_name`"
    assert rows[1].message == "`sys` imported but unused"
    assert rows[1].fingerprint != rows[2].fingerprint  # same code on the same line
    assert len(spy_run) == 1
    passed = spy_run[0][spy_run[0].index("--") + 1:]
    assert passed == ["pkg/has space.py", "broken.py", "-dash.py", "stubs/api.pyi", "modern.py", "clean.py"]


def test_ruff_findings_empty_list_runs_nothing(tmp_path: Path, spy_run: list[list[str]]) -> None:
    assert ruff_findings(tmp_path, []) == []
    assert ruff_findings(tmp_path, write(tmp_path, {"a.md": "x\n", "b.js": "y\n", "py.txt": "import os\n"})) == []
    assert spy_run == []


def test_ruff_findings_missing_file_skipped(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": "import os\n"})
    assert summary(ruff_findings(tmp_path, ["gone.py", "a.py"])) == [("a.py", 1, "ruff-F401", "warning")]


def test_ruff_findings_through_a_symlinked_root(tmp_path: Path) -> None:
    write(tmp_path / "real", {"sub/a.py": "import os\n"})
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert summary(ruff_findings(tmp_path / "link", ["sub/a.py"])) == [("sub/a.py", 1, "ruff-F401", "warning")]


def test_ruff_findings_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy_run: list[list[str]]) -> None:
    paths = write(tmp_path, PY_FILES)
    expected = ruff_findings(tmp_path, paths)
    monkeypatch.setattr(scanners, "RUFF_BATCH_SIZE", 2)
    assert ruff_findings(tmp_path, paths) == expected
    assert len(spy_run) == 1 + 3


def test_ruff_findings_fingerprint_survives_lines_inserted_above(tmp_path: Path) -> None:
    text = "import os\n\n\ndef f():\n    return undefined_name\n"
    write(tmp_path, {"a.py": text})
    before = ruff_findings(tmp_path, ["a.py"])
    write(tmp_path, {"a.py": '"""Doc."""\n' * 5 + text})
    after = ruff_findings(tmp_path, ["a.py"])
    assert [row.line for row in after] == [row.line + 5 for row in before] == [6, 10]
    assert [row.fingerprint for row in after] == [row.fingerprint for row in before]
    assert before[1].fingerprint == fingerprint("ruff-F821", "a.py", "return undefined_name", 0)


def fake_ruff(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-ruff"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_ruff_findings_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanners, "ruff_executable", lambda: fake_ruff(tmp_path, "exec sleep 30"))
    with pytest.raises(ScannerError, match="timed out"):
        ruff_findings(tmp_path, ["a.py"], timeout=0.5)


@pytest.mark.parametrize(("body", "error"), [
    ("echo 'ruff failed: bad option' >&2; exit 2", "status 2: ruff failed"),
    ("echo '{not json'; exit 1", "not JSON"),
])
def test_ruff_findings_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, error: str) -> None:
    monkeypatch.setattr(scanners, "ruff_executable", lambda: fake_ruff(tmp_path, body))
    with pytest.raises(ScannerError, match=error):
        ruff_findings(tmp_path, ["a.py"])


def test_ruff_findings_without_ruff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanners, "ruff_executable", lambda: None)
    with pytest.raises(ScannerError, match="not installed"):
        ruff_findings(tmp_path, ["a.py"])


def test_ruff_executable_is_the_venvs() -> None:
    assert scanners.ruff_executable() is not None
