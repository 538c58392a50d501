"""Appending to a workspace's receipt log: the one write of the receipts app.

The agent calls `receipt_append(facts=…)` once when a run ends, whatever its status. Appends to one
workspace are serialized by a row lock on its ReceiptLog (SQLite: the database write lock that every
kf transaction takes at BEGIN IMMEDIATE), so each receipt gets the next seq and the previous receipt's
hash, and the log never forks. The project's files are read for the findings' fingerprints *before*
the lock is taken, so the lock is held for one SELECT … FOR UPDATE, one INSERT and one UPDATE (one
round trip on Postgres), one signature and the commit, whatever the log's length.
"""

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Model
from django.utils import timezone

from accounts.models import Workspace
from api.errors import Conflict, NotFound
from projects.models import Project
from receipts import merkle
from receipts.canonical import (
    Facts,
    canonical_bytes,
    facts_clean,
    iso_z,
    receipt_document,
)
from receipts.fingerprints import findings_fingerprinted
from receipts.models import Receipt, ReceiptLog
from receipts.signing import head_sign


def receipt_append(*, facts: dict[str, Any]) -> Receipt:
    """Appends a finished run's receipt to its workspace's log and signs the new head.

    `facts`: run_id, ws_id, project_id, user_id (or None), task (hashed, never kept), model, status,
    input_tokens, output_tokens, usd (decimal string), tool_calls [{name, arguments, result}], files
    [{path, before_sha256, after_sha256}], snapshot_before, snapshot_after, findings [{path, line,
    rule, severity, message}], started_at (None if the run never started), ended_at (ISO 8601 with a
    zone, or aware datetimes).
    Idempotent per run: a second call for the same run returns the receipt already written.
    Raises InvalidRequest (details per field) for malformed facts, NotFound for an unknown workspace.
    """
    clean = facts_clean(facts)
    findings = findings_fingerprinted(_project_root(clean) if clean.findings else None, clean.findings)
    try:
        return _append(clean, findings)
    except IntegrityError:
        # run_id is unique: this run's receipt exists (a retry, or another caller at this very moment).
        existing = _existing(clean)
        if existing is None:
            raise
        return existing


def _project_root(facts: Facts) -> str | None:
    rows = _execute(_statements(connection.vendor)["project_root"], [facts.project_id, facts.ws_id])
    return rows[0][0] if rows else None


def _existing(facts: Facts) -> Receipt | None:
    receipt = Receipt.objects.filter(run_id=facts.run_id).first()
    if receipt is not None and receipt.workspace_id != facts.ws_id:
        raise Conflict("This run already has a receipt in another workspace.", details={"run_id": facts.run_id})
    return receipt


@transaction.atomic
def _append(facts: Facts, findings: list[dict[str, Any]]) -> Receipt:
    # atomic is required: the head row stays locked (FOR UPDATE) until the receipt is in.
    log = _log_locked(facts.ws_id)
    state = LogState.of(log)
    receipt = receipt_next(state, facts, findings, at=timezone.now())
    insert, update = _receipt_insert_sql(receipt), _head_update_sql(log, state, receipt)
    if connection.vendor == "postgresql":
        # One round trip for both writes (a data-modifying WITH runs whether or not it is read).
        _execute(f"WITH appended AS ({insert[0]}) {update[0]}", insert[1] + update[1])
    else:
        _execute(*insert)
        _execute(*update)
    return receipt


@dataclass
class LogState:
    """What the next append needs from the head row."""

    ws_id: str
    tree_size: int
    last_hash: str
    frontier: merkle.Frontier

    @classmethod
    def of(cls, log: ReceiptLog) -> "LogState":
        frontier = merkle.Frontier(log.tree_size, [bytes.fromhex(h) for h in log.frontier])
        return cls(ws_id=log.workspace_id, tree_size=log.tree_size, last_hash=log.last_hash, frontier=frontier)


def receipt_next(state: LogState, facts: Facts, findings: list[dict[str, Any]], *, at: datetime) -> Receipt:
    """The next receipt of the log (unsaved), its head signed; advances `state` past it."""
    seq = state.tree_size + 1
    body = canonical_bytes(receipt_document(facts, seq=seq, prev_hash=state.last_hash, findings=findings))
    leaf = merkle.leaf_hash(body)
    completed = state.frontier.append(leaf)
    root = state.frontier.root().hex()
    signature, key_id = head_sign(ws_id=state.ws_id, tree_size=seq, root_hash=root, at=iso_z(at))
    state.tree_size, state.last_hash = seq, leaf.hex()
    return Receipt(workspace_id=state.ws_id, seq=seq, run_id=facts.run_id, project_id=facts.project_id,
                   user_id=facts.user_id or "", body=body, hash=leaf.hex(),
                   subtree_hashes=[node.hex() for node in completed], root_hash=root, signature=signature,
                   key_id=key_id, appended_at=at)


_HEAD_FIELDS = ("tree_size", "last_hash", "frontier", "root_hash", "signed_at", "signature", "key_id")


def log_head_store(log: ReceiptLog, state: LogState, newest: Receipt) -> None:
    """Moves the head row to `newest` (the receipt `state` was advanced past)."""
    _execute(*_head_update_sql(log, state, newest))


def _head_update_sql(log: ReceiptLog, state: LogState, newest: Receipt) -> tuple[str, list[Any]]:
    log.tree_size, log.last_hash = state.tree_size, state.last_hash
    log.frontier = [node.hex() for node in state.frontier.hashes]
    log.root_hash, log.signed_at = newest.root_hash, newest.appended_at
    log.signature, log.key_id = newest.signature, newest.key_id
    return _statements(connection.vendor)["head_update"], [*_values(log, _HEAD_FIELDS), log.workspace_id]


# The statements under the lock are written out in SQL: the ORM spends about as much CPU compiling each
# of them as the database takes to run it. Values still go through each field's own preparation.

def _name(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _column(model: type[Model], field: str) -> str:
    return connection.ops.quote_name(model._meta.get_field(field).column)


def _values(obj: Model, fields: tuple[str, ...]) -> list[Any]:
    meta = obj._meta
    return [meta.get_field(f).get_db_prep_save(getattr(obj, meta.get_field(f).attname), connection) for f in fields]


def _execute(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


_RECEIPT_FIELDS = ("id", "workspace", "seq", "run_id", "project_id", "user_id", "body", "hash", "subtree_hashes",
                   "root_hash", "signature", "key_id", "appended_at")


def _receipt_insert_sql(receipt: Receipt) -> tuple[str, list[Any]]:
    return _statements(connection.vendor)["receipt_insert"], _values(receipt, _RECEIPT_FIELDS)


@functools.cache
def _statements(vendor: str) -> dict[str, str]:
    """The SQL text, built once per database vendor."""
    columns = ", ".join(_column(Receipt, f) for f in _RECEIPT_FIELDS)
    assignments = ", ".join(f"{_column(ReceiptLog, f)} = %s" for f in _HEAD_FIELDS)
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return {
        "receipt_insert": f"INSERT INTO {_name(Receipt)} ({columns}) VALUES ({', '.join(['%s'] * len(_RECEIPT_FIELDS))})",
        "head_update": f"UPDATE {_name(ReceiptLog)} SET {assignments} WHERE {_column(ReceiptLog, 'workspace')} = %s",
        "head_lock": (f"SELECT {_column(ReceiptLog, 'tree_size')}, {_column(ReceiptLog, 'last_hash')}, "
                      f"{_column(ReceiptLog, 'frontier')} FROM {_name(ReceiptLog)} "
                      f"WHERE {_column(ReceiptLog, 'workspace')} = %s{lock}"),
        "project_root": (f"SELECT {_column(Project, 'root')} FROM {_name(Project)} WHERE {_column(Project, 'id')} = %s "
                         f"AND {_column(Project, 'workspace')} = %s"),
    }


def _log_locked(ws_id: str) -> ReceiptLog:
    """The workspace's head row, created on first use, locked until the transaction ends (FOR UPDATE;
    SQLite has no row locks, but each kf transaction holds its write lock from BEGIN IMMEDIATE)."""
    sql = _statements(connection.vendor)["head_lock"]
    rows = _execute(sql, [ws_id])
    if not rows:
        # The workspace's first receipt (a head row exists only for a workspace that does).
        if not Workspace.objects.filter(pk=ws_id).exists():
            raise NotFound("No such workspace.")
        # Two first appends may race here: one insert wins, the other does nothing, both then lock it.
        ReceiptLog.objects.bulk_create([ReceiptLog(workspace_id=ws_id)], ignore_conflicts=True)
        rows = _execute(sql, [ws_id])
    tree_size, last_hash, frontier = rows[0]
    frontier = ReceiptLog._meta.get_field("frontier").from_db_value(frontier, None, connection)
    return ReceiptLog(workspace_id=ws_id, tree_size=tree_size, last_hash=last_hash, frontier=frontier)
