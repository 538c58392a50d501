"""What a receipt says, and its exact bytes.

The agent hands `receipt_append` plain facts about a finished run; `facts_clean` checks them and reduces
what must not be kept to hashes (the task text, each tool call's arguments and result). `receipt_document`
adds the log's own fields (seq, prev_hash, findings' fingerprints) and `canonical_bytes` encodes it as
RFC 8785 canonical JSON (sorted keys, no blanks, one spelling per string and number), so anyone can
recompute the bytes from the JSON and the hash from the bytes.

A receipt's *hash* is its RFC 9162 leaf hash, SHA-256(0x00 ‖ bytes): the value the next receipt's
`prev_hash` holds and the leaf of the Merkle tree, one domain-separated hash for both structures
(half the hashing of a separate chain hash when the whole log is recomputed).
"""

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import rfc8785

from api.errors import InvalidRequest

RECEIPT_VERSION = 1
GENESIS_HASH = "0" * 64
# The end statuses of an agent run (API.md, event `end`).
STATUSES = ("succeeded", "failed", "cancelled", "budget_exceeded")
SEVERITIES = ("info", "warning", "error")
MAX_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles: larger integers have no exact spelling
_ID = re.compile(r"^[a-z]{2,5}_[A-Za-z0-9]{1,40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SNAPSHOT = re.compile(r"^[0-9a-f]{0,64}$")


def canonical_bytes(document: dict[str, Any]) -> bytes:
    return rfc8785.dumps(document)


def sha256_hex(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def iso_z(moment: datetime) -> str:
    """One spelling of a UTC time, microseconds always present: signatures cover the text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def text(value: str) -> str:
    """A string RFC 8785 can encode: lone surrogates (file names that were not UTF-8) spelled out."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Facts:
    run_id: str
    ws_id: str
    project_id: str
    user_id: str | None
    task_sha256: str
    model: str
    status: str
    input_tokens: int
    output_tokens: int
    usd: str
    tool_calls: list[dict[str, str]]
    files: list[dict[str, str | None]]
    snapshot_before: str
    snapshot_after: str
    findings: list[dict[str, Any]]
    started_at: str | None  # None: the run never started (cancelled while queued)
    ended_at: str


class _Check:
    """Collects every problem with the facts, so the caller sees them all at once."""

    def __init__(self, facts: Any) -> None:
        if not isinstance(facts, dict):
            raise InvalidRequest("Receipt facts must be a dict.")
        self.facts = facts
        self.errors: dict[str, list[str]] = {}

    def fail(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def id(self, field: str, *, optional: bool = False) -> str | None:
        value = self.facts.get(field)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not _ID.match(value):
            self.fail(field, "must be a kf id such as run_…")
            return None
        return value

    def string(self, field: str, value: Any, *, max_length: int = 10_000, blank: bool = False) -> str:
        if not isinstance(value, str) or (not blank and not value) or len(value) > max_length:
            self.fail(field, f"must be a {'' if blank else 'non-empty '}string of at most {max_length} characters")
            return ""
        return text(value)

    def count(self, field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            self.fail(field, "must be a whole number ≥ 0")
            return 0
        return value

    def sha(self, field: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _HEX64.match(value):
            self.fail(field, "must be 64 lower-case hex digits or null")
            return None
        return value

    def moment(self, field: str, *, optional: bool = False) -> str | None:
        value = self.facts.get(field)
        if value is None and optional:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                value = None
        if not isinstance(value, datetime) or value.tzinfo is None:
            self.fail(field, "must be an ISO 8601 time with a zone (…Z)")
            return ""
        return iso_z(value)

    def items(self, field: str) -> list[Any]:
        value = self.facts.get(field, [])
        if not isinstance(value, list):
            self.fail(field, "must be a list")
            return []
        return value


def _usd(check: _Check, value: Any) -> str:
    try:
        amount = Decimal(value) if isinstance(value, str | Decimal) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount < 0:
        check.fail("usd", "must be a decimal string ≥ 0")
        return "0"
    return format(amount, "f")


def _argument_text(value: Any) -> str | bytes:
    # The JSON text the model sent; parsed arguments are hashed in their canonical form instead.
    return value if isinstance(value, str) else rfc8785.dumps(value)


def _tool_calls(check: _Check) -> list[dict[str, str]]:
    calls = []
    for i, call in enumerate(check.items("tool_calls")):
        field = f"tool_calls[{i}]"
        if not isinstance(call, dict):
            check.fail(field, "must be {name, arguments, result}")
            continue
        result = call.get("result")
        if not isinstance(result, str):
            check.fail(f"{field}.result", "must be the text the tool returned")
            result = ""
        try:
            arguments = sha256_hex(_argument_text(call.get("arguments", "")))
        except (rfc8785.CanonicalizationError, TypeError, ValueError):
            check.fail(f"{field}.arguments", "must be the JSON text the model sent")
            arguments = ""
        calls.append({"name": check.string(f"{field}.name", call.get("name"), max_length=200),
                      "arguments_sha256": arguments, "result_sha256": sha256_hex(result)})
    return calls


def _files(check: _Check) -> list[dict[str, str | None]]:
    files = []
    for i, item in enumerate(check.items("files")):
        field = f"files[{i}]"
        if not isinstance(item, dict):
            check.fail(field, "must be {path, before_sha256, after_sha256}")
            continue
        files.append({"path": check.string(f"{field}.path", item.get("path"), max_length=4096),
                      "before_sha256": check.sha(f"{field}.before_sha256", item.get("before_sha256")),
                      "after_sha256": check.sha(f"{field}.after_sha256", item.get("after_sha256"))})
    return files


def _findings(check: _Check) -> list[dict[str, Any]]:
    findings = []
    for i, item in enumerate(check.items("findings")):
        field = f"findings[{i}]"
        if not isinstance(item, dict):
            check.fail(field, "must be {path, line, rule, severity, message}")
            continue
        line = check.count(f"{field}.line", item.get("line"))
        severity = item.get("severity")
        if severity not in SEVERITIES:
            check.fail(f"{field}.severity", f"must be one of {', '.join(SEVERITIES)}")
        findings.append({"path": check.string(f"{field}.path", item.get("path"), max_length=4096),
                         "line": line, "rule": check.string(f"{field}.rule", item.get("rule"), max_length=200),
                         "severity": severity if severity in SEVERITIES else "",
                         "message": check.string(f"{field}.message", item.get("message", ""), blank=True)})
    return findings


def facts_clean(facts: Any) -> Facts:
    """Checked facts with the task, arguments and results reduced to SHA-256 (hex of their UTF-8)."""
    check = _Check(facts)
    task = facts.get("task")
    if not isinstance(task, str):
        check.fail("task", "must be the task text (it is hashed, never stored)")
        task = ""
    status = facts.get("status")
    if status not in STATUSES:
        check.fail("status", f"must be one of {', '.join(STATUSES)}")
    snapshots = {}
    for name in ("snapshot_before", "snapshot_after"):
        value = facts.get(name) or ""
        if not isinstance(value, str) or not _SNAPSHOT.match(value):
            check.fail(name, "must be a commit id (hex) or empty")
            value = ""
        snapshots[name] = value
    cleaned = Facts(
        run_id=check.id("run_id") or "", ws_id=check.id("ws_id") or "", project_id=check.id("project_id") or "",
        user_id=check.id("user_id", optional=True), task_sha256=sha256_hex(task),
        model=check.string("model", facts.get("model"), max_length=200, blank=True),
        status=status if status in STATUSES else "",
        input_tokens=check.count("input_tokens", facts.get("input_tokens")),
        output_tokens=check.count("output_tokens", facts.get("output_tokens")),
        usd=_usd(check, facts.get("usd")), tool_calls=_tool_calls(check), files=_files(check),
        snapshot_before=snapshots["snapshot_before"], snapshot_after=snapshots["snapshot_after"],
        findings=_findings(check), started_at=check.moment("started_at", optional=True), ended_at=check.moment("ended_at") or "",
    )
    if check.errors:
        raise InvalidRequest("The run's facts are not a valid receipt.", details=check.errors)
    return cleaned


def receipt_document(facts: Facts, *, seq: int, prev_hash: str, findings: list[dict[str, Any]]) -> dict[str, Any]:
    """The receipt as JSON data. `findings` are facts.findings with their fingerprints added."""
    return {
        "v": RECEIPT_VERSION,
        "seq": seq,
        "run_id": facts.run_id,
        "ws_id": facts.ws_id,
        "project_id": facts.project_id,
        "user_id": facts.user_id,
        "task_sha256": facts.task_sha256,
        "model": facts.model,
        "status": facts.status,
        "usage": {"input_tokens": facts.input_tokens, "output_tokens": facts.output_tokens, "usd": facts.usd},
        "tool_calls": facts.tool_calls,
        "files": facts.files,
        "snapshots": {"before": facts.snapshot_before, "after": facts.snapshot_after},
        "findings": findings,
        "started_at": facts.started_at,
        "ended_at": facts.ended_at,
        "prev_hash": prev_hash,
    }
