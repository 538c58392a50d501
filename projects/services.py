"""Projects: load (by path or git clone), rescan (index, symbols, findings), and the reads around them."""

import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Model, Sum
from django.utils import timezone
from pygments.lexers import find_lexer_class_for_filename
from pygments.util import ClassNotFound

from accounts.models import User, Workspace
from api.errors import InvalidRequest
from api.ids import new_id
from api.tasking import enqueue
from projects import paths
from projects.models import Blob, File, Finding, Project, ProjectOpen, Symbol
from projects.scanners import FindingRow, ScannerError, ruff_findings, scan_text
from projects.symbols import SymbolRow, SymbolsError, ctags_symbols
from projects.walk import git_head, is_git_worktree, project_files
from streams.models import Job
from streams.services import event_append, job_cancel_requested, job_create, job_finish, job_start

logger = logging.getLogger("kf.projects")

PROGRESS_EVERY_SECONDS = 0.25
BATCH = 500


def language_of(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    # Pygments matches names against hundreds of patterns: decide once per extension.
    return _language_for(f"_.{ext}" if dot and stem else name)


@functools.lru_cache(maxsize=4096)
def _language_for(filename: str) -> str:
    try:
        lexer = find_lexer_class_for_filename(filename)
    except ClassNotFound:
        return ""
    return lexer.name if lexer else ""


def project_touch(*, user: User, project: Project) -> None:
    ProjectOpen.objects.update_or_create(user=user, project=project, defaults={"opened_at": timezone.now()})


# --- load ----------------------------------------------------------------------------------------

def project_load_path(*, user: User, workspace: Workspace, path: str) -> tuple[Project, bool]:
    """Opens a folder under KF_PROJECTS_ROOT. Returns (project, created)."""
    root = paths.resolve_under(Path(settings.KF_PROJECTS_ROOT), path)
    with transaction.atomic():
        project, created = Project.objects.get_or_create(
            workspace=workspace, root=str(root),
            defaults={"name": root.name or "project", "source": Project.Source.PATH,
                      "vcs": "git" if is_git_worktree(root) else "none", "created_by": user},
        )
        project_touch(user=user, project=project)
        if created:
            rescan_start(user=user, project=project)
    return project, created


ALLOWED_SCHEMES = {"https", "file"}


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _check_git_url(git_url: str) -> str:
    url = git_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES or any(c in url for c in "\x00\n\r ") or url.startswith("-"):
        raise InvalidRequest("git_url must be an https:// or file:// URL.", details={"git_url": ["unsupported URL"]})
    if parts.scheme == "https" and not parts.hostname:
        raise InvalidRequest("git_url has no host.", details={"git_url": ["no host"]})
    if parts.scheme == "file":
        # A file:// clone could read any repository on the server: keep it to the projects root.
        try:
            paths.resolve_under(Path(settings.KF_PROJECTS_ROOT), parts.path)
        except InvalidRequest as exc:
            raise InvalidRequest(f"file:// clones must come from under the projects root: {exc.message}",
                                 details={"git_url": exc.details["path"]}) from exc
    return url


def project_load_git(*, user: User, workspace: Workspace, git_url: str) -> tuple[Project, bool]:
    """Clones `git_url` as a job and waits for it (bounded by KF_CLONE_TIMEOUT_SECONDS)."""
    url = _check_git_url(git_url)
    existing = Project.objects.filter(workspace=workspace, git_url=_redact(url)).first()
    if existing is not None:
        project_touch(user=user, project=existing)
        return existing, False
    from projects.tasks import clone_task

    with transaction.atomic():
        project_id = new_id("prj")
        project = Project.objects.create(
            id=project_id, workspace=workspace, name=_repo_name(url), source=Project.Source.GIT,
            git_url=_redact(url), vcs="git", created_by=user,
            root=str(Path(settings.KF_DATA_DIR) / "clones" / project_id),
        )
        job = job_create(kind="clone", owner=user, workspace=workspace, project_id=project.pk,
                         params={"url": url})
        enqueue(clone_task, job.pk)
    deadline = time.monotonic() + settings.KF_CLONE_TIMEOUT_SECONDS + 15
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.finished:
            break
        time.sleep(0.2)
    if job.status != Job.Status.SUCCEEDED:
        message = job.result.get("error") or "The clone did not finish in time."
        Project.objects.filter(pk=project.pk).delete()
        raise InvalidRequest(f"Could not clone the repository: {message}", details={"git_url": [message]})
    project.refresh_from_db()
    with transaction.atomic():
        project_touch(user=user, project=project)
        rescan_start(user=user, project=project)
    return project, True


def _repo_name(url: str) -> str:
    name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\.git$", "", name) or "repository"


def _git_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip().lower().startswith(("fatal:", "error:"))]
    text = lines[-1] if lines else (stderr.strip().splitlines() or ["git failed"])[-1]
    return re.sub(r"https://[^@\s/]+@", "https://", text)[:300]


def project_clone(*, job_id: str) -> None:
    job = Job.objects.get(pk=job_id)
    if not job_start(job_id=job_id):
        return
    project = Project.objects.filter(pk=job.project_id).first()
    if project is None:
        job_finish(job_id=job_id, status=Job.Status.CANCELLED)
        return
    target = Path(project.root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "file:https",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false"}
    cmd = ["git", "-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={settings.KF_CLONE_STALL_SECONDS}",
           "-c", "core.symlinks=true", "clone", "--quiet", "--no-recurse-submodules", "--", job.params["url"], str(target)]
    event_append(job_id=job_id, type="progress", data={"phase": "clone", "done": 0, "total": 1})
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=settings.KF_CLONE_TIMEOUT_SECONDS,
                                start_new_session=True)
    except subprocess.TimeoutExpired:
        shutil.rmtree(target, ignore_errors=True)
        job_finish(job_id=job_id, status=Job.Status.FAILED,
                   result={"error": f"the host did not answer within {settings.KF_CLONE_TIMEOUT_SECONDS} s"})
        return
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        job_finish(job_id=job_id, status=Job.Status.FAILED, result={"error": _git_error(result.stderr)})
        return
    Project.objects.filter(pk=project.pk).update(head=git_head(target))
    event_append(job_id=job_id, type="progress", data={"phase": "clone", "done": 1, "total": 1})
    job_finish(job_id=job_id, status=Job.Status.SUCCEEDED, result={"project_id": project.pk})


# --- rescan --------------------------------------------------------------------------------------

def rescan_start(*, user: User | None, project: Project) -> Job:
    """The running rescan of the project, or a new one (enqueued after commit)."""
    from projects.tasks import rescan_task

    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()  # one starter at a time
        running = Job.objects.filter(kind="rescan", project_id=project.pk,
                                     status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).order_by("-created_at").first()
        if running is not None:
            return running
        job = job_create(kind="rescan", owner=user, workspace=project.workspace, project_id=project.pk)
        enqueue(rescan_task, job.pk)
    return job


@dataclass
class _Seen:
    path: str
    size: int
    mtime_ns: int


class _Progress:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            event_append(job_id=self.job_id, type="progress", data={"phase": phase, "done": done, "total": total})


class _Cancelled(Exception):
    pass


def _read_text(root: Path, rel: str, max_bytes: int) -> tuple[bytes, str] | None:
    """The file's bytes and text, or None for binaries, non-UTF-8 and files that vanished or grew."""
    try:
        fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size > max_bytes:
            return None
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes or b"\x00" in data:  # Postgres text cannot hold NUL
        return None
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def project_rescan(*, job_id: str) -> dict[str, Any]:
    """Walks the tree, stores changed text files (content once per sha), drops vanished ones, and
    refreshes symbols and findings of what changed. Streams progress; ends with counts."""
    job = Job.objects.get(pk=job_id)
    if not job_start(job_id=job_id):
        return {}
    started = time.monotonic()
    project = Project.objects.get(pk=job.project_id)
    progress = _Progress(job_id)
    try:
        result = _rescan(project, job_id, progress)
    except _Cancelled:
        job_finish(job_id=job_id, status=Job.Status.CANCELLED)
        return {}
    except Exception as exc:  # the job's boundary: whatever broke is reported in its `end`
        logger.exception("rescan %s failed", job_id)
        job_finish(job_id=job_id, status=Job.Status.FAILED, result={"error": str(exc)[:300]})
        return {}
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    job_finish(job_id=job_id, status=Job.Status.SUCCEEDED, result=result)
    return result


def _rescan(project: Project, job_id: str, progress: _Progress) -> dict[str, Any]:
    root = Path(project.root)
    if not root.is_dir():
        raise RuntimeError("the project folder no longer exists")
    max_bytes = settings.KF_INDEX_MAX_FILE_BYTES

    progress("walk", 0, 0, force=True)
    seen: dict[str, _Seen] = {}
    for rel, info in project_files(root):
        if info.st_size <= max_bytes:
            seen[rel] = _Seen(rel, info.st_size, info.st_mtime_ns)
        if len(seen) % 1000 == 0:
            progress("walk", len(seen), 0)
    total = len(seen)
    progress("walk", total, total, force=True)

    existing = {f["path"]: f for f in File.objects.filter(project=project).values("id", "path", "size", "mtime_ns", "blob_id")}
    removed = [existing[p]["id"] for p in existing.keys() - seen.keys()]
    candidates = [s for s in seen.values() if s.path not in existing
                  or (existing[s.path]["size"], existing[s.path]["mtime_ns"]) != (s.size, s.mtime_ns)]

    changed: dict[str, str] = {}  # path → text, for symbols and findings
    stale_blobs = {existing[p]["blob_id"] for p in existing.keys() - seen.keys()}
    skipped = 0
    for start in range(0, len(candidates), BATCH):
        if job_cancel_requested(job_id):
            raise _Cancelled
        batch = candidates[start:start + BATCH]
        texts: dict[str, tuple[str, str, int]] = {}  # path → (sha, text, size)
        for item in batch:
            read = _read_text(root, item.path, max_bytes)
            if read is None:
                skipped += 1
                continue
            data, text = read
            texts[item.path] = (hashlib.sha256(data).hexdigest(), text, len(data))
        blob_ids = _blobs_store(texts)
        new_files: list[File] = []
        updated: list[File] = []
        for item in batch:
            old = existing.get(item.path)
            if item.path not in texts:
                if old is not None:  # became binary or unreadable
                    removed.append(old["id"])
                    stale_blobs.add(old["blob_id"])
                continue
            sha, text, size = texts[item.path]
            blob_id = blob_ids[sha]
            if old is None:
                new_files.append(File(project=project, path=item.path, blob_id=blob_id, size=size,
                                      mtime_ns=item.mtime_ns, language=language_of(item.path)))
                changed[item.path] = text
            else:
                updated.append(File(pk=old["id"], blob_id=blob_id, size=size, mtime_ns=item.mtime_ns))
                if old["blob_id"] != blob_id:
                    stale_blobs.add(old["blob_id"])
                    changed[item.path] = text
        with transaction.atomic():
            File.objects.bulk_create(new_files, batch_size=BATCH)
            File.objects.bulk_update(updated, ["blob_id", "size", "mtime_ns"], batch_size=BATCH)
        progress("index", min(start + BATCH, len(candidates)), len(candidates))
    progress("index", len(candidates), len(candidates), force=True)

    File.objects.filter(pk__in=removed).delete()  # their symbols and findings go with them
    _blobs_release(stale_blobs)

    changed_ids = dict(File.objects.filter(project=project, path__in=list(changed)).values_list("path", "id"))
    _symbols_refresh(project, root, changed_ids, job_id, progress)
    _findings_refresh(project, root, changed, changed_ids, job_id, progress)

    stats = {
        "files": File.objects.filter(project=project).count(),
        "symbols": Symbol.objects.filter(project=project).count(),
        "findings": Finding.objects.filter(project=project).count(),
    }
    bytes_total = File.objects.filter(project=project).aggregate(total=Sum("size"))["total"] or 0
    Project.objects.filter(pk=project.pk).update(
        files_count=stats["files"], symbols_count=stats["symbols"], findings_count=stats["findings"],
        bytes_total=bytes_total, indexed_at=timezone.now(), head=git_head(root),
    )
    return {**stats, "bytes": bytes_total, "changed": len(changed), "removed": len(removed), "skipped": skipped}


def _blobs_store(texts: dict[str, tuple[str, str, int]]) -> dict[str, int]:
    by_sha = {sha: (text, size) for sha, text, size in texts.values()}
    if not by_sha:
        return {}
    Blob.objects.bulk_create([Blob(sha=sha, content=text, size=size) for sha, (text, size) in by_sha.items()],
                             ignore_conflicts=True, batch_size=200)
    return dict(Blob.objects.filter(sha__in=list(by_sha)).values_list("sha", "id"))


def _blobs_release(blob_ids: set[int]) -> None:
    """Deletes contents no file refers to any more. Best effort: a concurrent rescan of another
    project may have just taken the same blob, and then it stays."""
    if not blob_ids:
        return
    try:
        with transaction.atomic():
            Blob.objects.filter(pk__in=list(blob_ids), files__isnull=True).delete()
    except IntegrityError:
        logger.info("blob cleanup raced with another rescan; left %d blobs", len(blob_ids))


def _insert_rows(model: type[Model], columns: list[str], rows: list[tuple[Any, ...]], *,
                 ignore_conflicts: bool = False) -> None:
    """Plain INSERTs (COPY on Postgres): for the tens of thousands of symbol and finding rows of a big
    rescan, building model instances and compiling bulk_create's SQL cost several times the insert."""
    if not rows:
        return
    quote = connection.ops.quote_name
    target = f"{quote(model._meta.db_table)} ({', '.join(quote(c) for c in columns)})"
    if connection.vendor == "postgresql" and not ignore_conflicts:
        with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(
                f"COPY {target} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    sql = f"INSERT INTO {target} VALUES ({', '.join(['%s'] * len(columns))})"
    if ignore_conflicts:
        sql += " ON CONFLICT DO NOTHING"  # Postgres ≥ 9.5 and SQLite ≥ 3.24
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(rows), 5000):
            cursor.executemany(sql, rows[start:start + 5000])


def _symbols_refresh(project: Project, root: Path, changed_ids: dict[str, int], job_id: str,
                     progress: _Progress) -> None:
    Symbol.objects.filter(file_id__in=list(changed_ids.values())).delete()
    paths_list = sorted(changed_ids)
    for start in range(0, len(paths_list), BATCH * 4):
        if job_cancel_requested(job_id):
            raise _Cancelled
        try:
            rows: list[SymbolRow] = ctags_symbols(root, paths_list[start:start + BATCH * 4])
        except SymbolsError as exc:  # the index stays useful without these symbols: say so, go on
            event_append(job_id=job_id, type="warning", data={"phase": "symbols", "message": str(exc)[:300]})
            rows = []
        _insert_rows(Symbol, ["project_id", "file_id", "path", "name", "kind", "line", "end_line", "container",
                              "language"],
                     [(project.pk, changed_ids[r.path], r.path, r.name[:255], r.kind[:40], r.line, r.end_line,
                       r.container[:255], r.language[:50]) for r in rows if r.path in changed_ids])
        progress("symbols", min(start + BATCH * 4, len(paths_list)), len(paths_list))
    progress("symbols", len(paths_list), len(paths_list), force=True)


def _findings_refresh(project: Project, root: Path, changed: dict[str, str], changed_ids: dict[str, int],
                      job_id: str, progress: _Progress) -> None:
    Finding.objects.filter(file_id__in=list(changed_ids.values())).delete()
    rows: list[FindingRow] = []
    for done, (path, text) in enumerate(changed.items(), 1):
        rows.extend(scan_text(path, text))
        if done % BATCH == 0:
            if job_cancel_requested(job_id):
                raise _Cancelled
            progress("findings", done, len(changed))
    python = sorted(p for p in changed if p.endswith((".py", ".pyi")))
    if python:
        try:
            rows.extend(ruff_findings(root, python))
        except ScannerError as exc:
            event_append(job_id=job_id, type="warning", data={"phase": "findings", "message": str(exc)[:300]})
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    _insert_rows(Finding, ["id", "project_id", "file_id", "rule", "severity", "path", "line", "message",
                           "fingerprint", "created_at"],
                 [(new_id("fnd"), project.pk, changed_ids[r.path], r.rule, r.severity, r.path, r.line,
                   r.message[:500], r.fingerprint, now) for r in rows if r.path in changed_ids],
                 ignore_conflicts=True)
    progress("findings", len(changed), len(changed), force=True)


# --- reads ---------------------------------------------------------------------------------------

def file_read(*, project: Project, path: str) -> dict[str, Any]:
    opened = paths.read_file(project.root, path, max_bytes=settings.KF_FILE_MAX_BYTES)
    binary = b"\x00" in opened.data[:8192]
    content: str | None = None
    encoding: str | None = None
    if not binary:
        try:
            content, encoding = opened.data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            binary = True
    return {
        "path": opened.path, "size": opened.size, "encoding": encoding, "binary": binary, "content": content,
        "sha256": hashlib.sha256(opened.data).hexdigest(), "language": language_of(opened.path),
    }
