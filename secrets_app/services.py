"""Every write of the vault, and every read of a value (reveal, use), each audited with names only.

Master-key rotation (DESIGN decision 10): one at a time per installation (the KeyState row is the
lock, taken with a conditional UPDATE), a new master version becomes the one writes use, then data
keys are re-wrapped in small batches, each its own transaction whose UPDATE only touches a row still
as it was read. Killing the process at any point loses nothing; running it again finishes the job.
"""

import logging
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Role, User, Workspace
from accounts.selectors import workspace_get, workspace_list
from accounts.services import audit_record
from api.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from api.tasking import enqueue
from secrets_app import crypto, selectors
from secrets_app.crypto import MasterKeyUnavailable, SecretCorrupted
from secrets_app.models import KeyState, MasterKey, Rotation, Secret
from streams.services import event_append, job_create, job_finish, job_start

logger = logging.getLogger("kf.secrets")

ROTATION_BATCH = 200
# A running rotation whose last batch is older than this is taken to be dead (its worker was killed)
# and is resumed by the next rotate-master call. Resuming a live one is harmless, only wasted work.
ROTATION_STALL_SECONDS = 30


def value_check(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("value must be a string.", details={"value": ["must be a string"]})
    if value == "":
        raise InvalidRequest("value must not be empty.", details={"value": ["must not be empty"]})
    if "\x00" in value:
        # Secrets reach commands as environment variables, which cannot hold NUL.
        raise InvalidRequest("value must not contain NUL characters.", details={"value": ["contains NUL"]})
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise InvalidRequest("value must be valid Unicode text.", details={"value": ["not valid Unicode"]}) from None
    limit = settings.KF_SECRET_MAX_BYTES
    if size > limit:
        raise PayloadTooLarge(f"The value is {size} bytes; secrets are limited to {limit} bytes.",
                              details={"value": [f"at most {limit} bytes"], "max_bytes": limit})
    return value


# --- the write version ---------------------------------------------------------------------------

def _keystate_ensure() -> None:
    """The KeyState row exists (first use, or a fresh database): writes start on the newest key."""
    if KeyState.objects.filter(pk=1).exists():
        return
    newest = crypto.keyring().newest
    try:
        with transaction.atomic():
            KeyState.objects.create(pk=1, current_version=newest)
            MasterKey.objects.get_or_create(version=newest)
    except IntegrityError:
        pass  # another process created it first; its version is as good


def _write_version() -> int:
    """The master version new data keys are wrapped with. Call inside the writing transaction: on
    Postgres the row stays share-locked until commit, so a rotation switching versions waits for
    in-flight sets and every set after it sees the new version (SQLite's IMMEDIATE transactions
    serialise writers anyway)."""
    _keystate_ensure()
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT current_version FROM {KeyState._meta.db_table} WHERE id = 1{lock}")
        return cursor.fetchone()[0]


def _open(secret: Secret) -> str:
    return crypto.open_sealed(
        wrapped_key=secret.wrapped_key, ciphertext=secret.ciphertext, ws_id=secret.workspace_id,
        name=secret.name, version=secret.version, key_version=secret.key_version,
        master_key=crypto.keyring().key(secret.key_version))


# --- set, delete, reveal, use --------------------------------------------------------------------

def secret_set(*, user: User | None, workspace: Workspace, name: str, value: str,
               ip: str | None = None) -> tuple[Secret, bool]:
    """Creates or replaces a secret (new version, new data key). The caller checked admin+.
    Returns (secret, created)."""
    name = selectors.name_check(name)
    value = value_check(value)
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                return _secret_write(user=user, workspace=workspace, name=name, value=value, ip=ip)
        except IntegrityError:
            # Two first sets of one name at once: the loser retries as an update of the winner's row.
            if attempt == 2:
                raise Conflict("The secret was changed at the same time; try again.") from None
    raise AssertionError("unreachable")


def _secret_write(*, user: User | None, workspace: Workspace, name: str, value: str,
                  ip: str | None) -> tuple[Secret, bool]:
    key_version = _write_version()
    master_key = crypto.keyring().key(key_version)
    secret = Secret.objects.select_for_update().filter(workspace=workspace, name=name).first()
    now = timezone.now()
    created = secret is None
    version = 1 if secret is None else secret.version + 1
    sealed = crypto.seal(value=value, ws_id=workspace.pk, name=name, version=version, key_version=key_version,
                         master_key=master_key)
    if secret is None:
        secret = Secret.objects.create(
            workspace=workspace, name=name, version=version, key_version=key_version,
            wrapped_key=sealed.wrapped_key, ciphertext=sealed.ciphertext, created_at=now, updated_at=now,
            created_by=user, updated_by=user)
    else:
        secret.version, secret.key_version = version, key_version
        secret.wrapped_key, secret.ciphertext = sealed.wrapped_key, sealed.ciphertext
        secret.updated_at, secret.updated_by = now, user
        secret.save(update_fields=["version", "key_version", "wrapped_key", "ciphertext", "updated_at",
                                   "updated_by"])
    audit_record(action="secret.set", actor=user, workspace=workspace, ip=ip, target=name,
                 meta={"ws_id": workspace.pk, "name": name, "version": version, "created": created})
    return secret, created


@transaction.atomic
def secret_delete(*, user: User, secret: Secret, ip: str | None = None) -> None:
    if not Secret.objects.filter(pk=secret.pk).delete()[0]:
        raise NotFound(f"No secret named {secret.name} in this workspace.")
    audit_record(action="secret.delete", actor=user, workspace=secret.workspace, ip=ip, target=secret.name,
                 meta={"ws_id": secret.workspace_id, "name": secret.name, "version": secret.version})


def secret_reveal(*, user: User, secret: Secret, ip: str | None = None) -> str:
    """The value, for someone the selector allowed (admin+). Audited: who, when, which name."""
    meta = {"ws_id": secret.workspace_id, "name": secret.name, "version": secret.version}
    try:
        value = _open(secret)
    except SecretCorrupted:
        audit_record(action="secret.reveal_failed", actor=user, workspace=secret.workspace, ip=ip,
                     target=secret.name, meta={**meta, "reason": "corrupted"})
        raise
    audit_record(action="secret.reveal", actor=user, workspace=secret.workspace, ip=ip, target=secret.name,
                 meta=meta)
    return value


def secrets_for_use(*, user: User, workspace: Workspace, names: list[str]) -> dict[str, str]:
    """{name: value} for a command that asked for these secrets by name. Needs member+ (outsiders
    not_found, viewers forbidden); unknown or invalid names → invalid_request listing each in
    details["secrets"]. One `secret.use` audit record with the names."""
    workspace = workspace_get(user=user, ws_id=workspace.pk, min_role=Role.MEMBER)
    if not isinstance(names, (list, tuple)):
        raise InvalidRequest("secrets must be a list of names.", details={"secrets": ["must be a list of names"]})
    wanted: list[str] = []
    problems: list[str] = []
    for name in names:
        if not isinstance(name, str) or not selectors.NAME_RE.fullmatch(name):
            shown = name[:64] if isinstance(name, str) else repr(name)[:64]
            problems.append(f"{shown}: not a valid secret name")
        elif name not in wanted:
            wanted.append(name)
    if not wanted and not problems:
        return {}
    rows = {s.name: s for s in Secret.objects.filter(workspace=workspace, name__in=wanted).select_related("workspace")}
    problems += [f"{name}: no such secret" for name in wanted if name not in rows]
    if problems:
        raise InvalidRequest(f"Unknown or invalid secrets: {'; '.join(problems)}.", details={"secrets": problems})
    values = {name: _open(rows[name]) for name in wanted}
    audit_record(action="secret.use", actor=user, workspace=workspace, target=", ".join(wanted),
                 meta={"ws_id": workspace.pk, "names": wanted})
    return values


# --- master key rotation -------------------------------------------------------------------------

class _RotationBusy(Exception):
    pass


def rotation_allowed(user: User) -> bool:
    """Rotation is installation-wide: only operators (staff or superusers) may start it."""
    return bool(user.is_staff or user.is_superuser)


def master_key_rotation_start(*, user: User | None, ip: str | None = None,
                              background: bool = True) -> tuple[Rotation, bool]:
    """Starts a rotation: takes the lock, makes the new master version the one writes use, and (with
    `background`) queues the re-wrapping. If one is already running, returns it instead (and queues it
    again if it looks dead). Returns (rotation, started)."""
    _keystate_ensure()
    try:
        with transaction.atomic():
            rotation = Rotation.objects.create(started_by=user)
            if not KeyState.objects.filter(pk=1, rotation__isnull=True).update(rotation=rotation):
                raise _RotationBusy
    except _RotationBusy:
        active = selectors.rotation_active()
        if active is None:  # it finished in between
            return master_key_rotation_start(user=user, ip=ip, background=background)
        if background and _rotation_claim_stalled(active):
            logger.warning("rotation %s made no progress for %ss: resuming it", active.pk, ROTATION_STALL_SECONDS)
            enqueue(_rotate_task(), active.pk)
        return active, False
    try:
        _rotation_prepare(rotation)
    except MasterKeyUnavailable as exc:
        _rotation_finish(rotation, failed={}, error=exc.message)
        raise
    job_workspace = _job_workspace(user)
    if job_workspace is not None:
        job = job_create(kind="secrets.rotate", owner=user, workspace=job_workspace,
                         params={"rotation_id": rotation.pk})
        Rotation.objects.filter(pk=rotation.pk).update(job_id=job.pk)
    rotation.refresh_from_db()
    audit_record(action="master_key.rotate", actor=user, ip=ip, target=rotation.pk,
                 meta={"from_version": rotation.from_version, "key_version": rotation.target_version,
                       "total": rotation.total})
    if background:
        enqueue(_rotate_task(), rotation.pk)
    return rotation, True


def _rotate_task() -> Any:
    from secrets_app.tasks import rotate_master_task  # tasks import this module

    return rotate_master_task


def _job_workspace(user: User | None) -> Workspace | None:
    """Where the rotation's progress job lives: the operator's own workspace (personal first)."""
    if user is None:
        return None
    owned = [m for m in workspace_list(user=user) if m.role == Role.OWNER]
    owned.sort(key=lambda m: not m.workspace.personal)
    return owned[0].workspace if owned else None


def _rotation_claim_stalled(rotation: Rotation) -> bool:
    cutoff = timezone.now() - timedelta(seconds=ROTATION_STALL_SECONDS)
    if rotation.heartbeat_at >= cutoff:
        return False
    # Only the caller whose conditional UPDATE wins queues it again.
    return bool(Rotation.objects.filter(pk=rotation.pk, status=Rotation.Status.RUNNING,
                                        heartbeat_at=rotation.heartbeat_at).update(heartbeat_at=timezone.now()))


def _rotation_prepare(rotation: Rotation) -> None:
    """Picks the target version and makes writes use it. Idempotent: a rerun after a crash finds the
    target recorded, or reuses the key it appended to the file before the crash."""
    rotation.refresh_from_db()
    if rotation.target_version is not None:
        return
    ring = crypto.keyring()
    current = KeyState.objects.values_list("current_version", flat=True).get(pk=1)
    if ring.source == "file":
        target = ring.newest if ring.newest > current else crypto.key_file_add_version()
    else:
        # KF_MASTER_KEY: the operator adds the new version to the environment, then rotates.
        target = ring.newest
        if target < current:
            raise MasterKeyUnavailable(
                f"KF_MASTER_KEY's newest key is v{target}, but secrets are already written with "
                f"v{current}: configure v{current} or a newer version.", details={"key_version": current})
    crypto.keyring().key(target)  # fails clearly if the file lost it
    with transaction.atomic():
        if not KeyState.objects.filter(pk=1, rotation=rotation).update(current_version=target):
            raise Conflict("The rotation lost its lock.")
        MasterKey.objects.get_or_create(version=target)
        total = Secret.objects.filter(key_version__lt=target).count()
        Rotation.objects.filter(pk=rotation.pk).update(from_version=current, target_version=target, total=total,
                                                       heartbeat_at=timezone.now())
    rotation.refresh_from_db()


def master_key_rotation_run(*, rotation_id: str, batch_size: int = ROTATION_BATCH,
                            pause: float = 0.0) -> Rotation | None:
    """Re-wraps every data key still on an older master version, batch by batch, then retires the
    versions nothing uses any more. Safe to run again after any interruption, and even beside another
    runner of the same rotation (each row is updated only if still as read)."""
    rotation = Rotation.objects.filter(pk=rotation_id).first()
    if rotation is None or rotation.status != Rotation.Status.RUNNING:
        return rotation
    try:
        _rotation_prepare(rotation)
    except MasterKeyUnavailable as exc:
        return _rotation_finish(rotation, failed={}, error=exc.message)
    if rotation.job_id:
        job_start(job_id=rotation.job_id)  # False on a rerun: it is running already
    target = rotation.target_version
    ring = crypto.keyring()
    try:
        to_key = ring.key(target)
    except MasterKeyUnavailable as exc:  # this process is configured without the new key
        return _rotation_finish(rotation, failed={}, error=exc.message)
    failed: dict[str, str] = {}
    while True:
        after = ""
        while True:
            rows = list(Secret.objects.filter(key_version__lt=target, id__gt=after).order_by("id").values_list(
                "id", "workspace_id", "name", "version", "key_version", "wrapped_key")[:batch_size])
            if not rows:
                break
            after = rows[-1][0]
            _rewrap_batch(rotation=rotation, rows=rows, ring=ring, to_key=to_key, failed=failed)
            if pause:
                time.sleep(pause)
        if not Secret.objects.filter(key_version__lt=target).exclude(id__in=list(failed)).exists():
            break
    return _rotation_finish(rotation, failed=failed)


def _rewrap_batch(*, rotation: Rotation, rows: list[tuple], ring: crypto.Keyring, to_key: bytes,
                  failed: dict[str, str]) -> int:
    target = rotation.target_version
    updates: list[tuple[Any, ...]] = []
    for pk, ws_id, name, version, key_version, wrapped_key in rows:
        try:
            rewrapped = crypto.rewrap(wrapped_key=bytes(wrapped_key), ws_id=ws_id, name=name, version=version,
                                      from_version=key_version, from_key=ring.key(key_version),
                                      to_version=target, to_key=to_key)
        except (SecretCorrupted, MasterKeyUnavailable):
            failed[pk] = f"{ws_id}/{name}"
            continue
        updates.append((pk, key_version, version, rewrapped))
    with transaction.atomic():
        done = 0
        if updates:
            # Only rows still as they were read: a set that committed since (new version, already on
            # the newest key) must not be overwritten with the old data key. One conditional UPDATE
            # for the whole batch (row by row, the round trips were most of a rotation's time).
            values = ", ".join(["(%s, %s, %s, %s)"] * len(updates))
            with connection.cursor() as cursor:
                cursor.execute(_REWRAP_SQL.format(values=values),
                               [target] + [value for update in updates for value in update])
                done = cursor.rowcount
        Rotation.objects.filter(pk=rotation.pk).update(rewrapped=F("rewrapped") + done, heartbeat_at=timezone.now())
        if rotation.job_id:
            so_far = Rotation.objects.values_list("rewrapped", flat=True).get(pk=rotation.pk)
            event_append(job_id=rotation.job_id, type="progress",
                         data={"phase": "rewrap", "done": so_far, "total": rotation.total})
    return done


# Postgres and SQLite (≥ 3.33) both take UPDATE … FROM (VALUES …), whose columns both name column1…
# (not a CTE: Python's sqlite3 reports no rowcount for a statement that starts with WITH).
_SECRETS = Secret._meta.db_table
_REWRAP_SQL = (f"UPDATE {_SECRETS} SET key_version = %s, wrapped_key = v.column4 FROM (VALUES {{values}}) AS v "
               f"WHERE {_SECRETS}.id = v.column1 AND {_SECRETS}.key_version = v.column2 "
               f"AND {_SECRETS}.version = v.column3")


def _rotation_finish(rotation: Rotation, *, failed: dict[str, str], error: str = "") -> Rotation:
    now = timezone.now()
    target = rotation.target_version
    retired: list[int] = []
    if failed and not error:
        shown = ", ".join(sorted(failed.values())[:20])
        error = (f"{len(failed)} secret(s) could not be re-wrapped because their data key failed to unwrap "
                 f"(altered, or their master key is missing): {shown}. The old master version stays in use.")
    with transaction.atomic():
        if not error and target is not None:
            known = set(MasterKey.objects.values_list("version", flat=True)) | set(crypto.keyring().keys)
            older = {v for v in known if v < target}
            used = set(Secret.objects.filter(key_version__in=older).values_list("key_version", flat=True).distinct())
            already = set(MasterKey.objects.filter(retired_at__isnull=False).values_list("version", flat=True))
            retired = sorted(older - used - already)
            for version in retired:
                MasterKey.objects.get_or_create(version=version)
            MasterKey.objects.filter(version__in=retired, retired_at__isnull=True).update(retired_at=now)
        status = Rotation.Status.FAILED if error else Rotation.Status.SUCCEEDED
        finished = Rotation.objects.filter(pk=rotation.pk, status=Rotation.Status.RUNNING).update(
            status=status, finished_at=now, retired=retired, failed=sorted(failed.values()), error=error)
        if finished:
            KeyState.objects.filter(pk=1, rotation=rotation).update(rotation=None)
            rotation.refresh_from_db()
            facts = {"key_version": target, "rewrapped": rotation.rewrapped, "total": rotation.total,
                     "retired": retired, "failed": len(failed)}
            audit_record(action="master_key.rotated" if status == Rotation.Status.SUCCEEDED
                         else "master_key.rotation_failed", actor=rotation.started_by, target=rotation.pk, meta=facts)
            if rotation.job_id:
                job_finish(job_id=rotation.job_id, status=status, result={**facts, "error": error} if error else facts)
    if finished and crypto.keyring().source == "file":
        # After the commit, and for every version the database has retired, so a crash between the two
        # is repaired by the next rotation.
        crypto.key_file_mark_retired(set(MasterKey.objects.filter(retired_at__isnull=False)
                                         .values_list("version", flat=True)))
    rotation.refresh_from_db()
    return rotation


def secret_values_for_masking(*, workspace: Workspace) -> list[str]:
    """Every secret value of the workspace, for masking what an agent run shows (a file or a command
    output can contain one). Not a use of the secrets: nothing is handed to a process, so no audit.
    A secret that no longer decrypts (tampered) is skipped: masking must not stop the run."""
    values = []
    for secret in Secret.objects.filter(workspace=workspace).iterator():
        try:
            values.append(_open(secret))
        except (SecretCorrupted, MasterKeyUnavailable):
            continue
    return [v for v in values if v]
