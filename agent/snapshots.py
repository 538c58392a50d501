"""Snapshots of a project's working tree as hidden git commits, and rollback to them (DESIGN decision 6).

Refs. The snapshot taken before a run's first write is `refs/kf/snapshots/<run_id>`; the one taken
when the run ends is `refs/kf/snapshots/<run_id>-after` (`after_ref_name(run_id)`). The rollback
endpoint passes `snapshot_ref_tree(ref_name=after_ref_name(run_id))` as `expected_tree`, so files
edited after the run ended make the rollback a `conflict` unless forced.

Where the commits live.
- A project inside a git work tree: in that repository. The snapshot is made with a temporary index
  (GIT_INDEX_FILE in a temp folder: `read-tree HEAD`, `add -A`, `write-tree`, `commit-tree`,
  `update-ref`), so the user's index, branch, HEAD, stash and untracked files are never touched.
- A folder that is no git work tree: a shadow git directory `KF_DATA_DIR/shadow/<project_id>.git`
  used with `--git-dir=<shadow> --work-tree=<root>`; no `.git` is ever created in the user's folder.
  A `.gitignore` in the folder is honoured just as in a repository.
- A project root that is a subfolder of a repository: the snapshot commit is HEAD's tree with only
  that subfolder replaced by its current state (`add -A -- <subfolder>`), and every comparison,
  diff and restore is limited to the subfolder: files elsewhere in the repository are never
  touched. Paths returned are relative to the project root.
- A project root that the enclosing repository ignores (e.g. under an ignored `var/`) or that lies
  under KF_PROJECTS_ROOT/KF_DATA_DIR while the repository encloses those folders: treated as a
  non-git folder (shadow), since the enclosing repository would record nothing of it.

What is recorded and restored: every file `git add -A` would record (tracked files, even when
ignored, plus untracked files not ignored), with git's modes (regular, executable, symlink) and
exact bytes. Git content conversions are switched off where config drives them (core.autocrlf), so
bytes come back identical; conversions declared in `.gitattributes` (eol, filters such as LFS)
apply as they do for git itself. Other permission bits follow the umask, as with git checkout.
Submodules and nested repositories are recorded as gitlinks by `git add` and left alone: never
descended into, never restored or removed. Ignored files are never recorded, restored or removed.

Git runs with a cleaned environment (no GIT_* variable of the caller leaks in, no system or global
config), hooks and fsmonitor disabled (a repository's hooks must not run on our behalf), a
safe.directory entry for the project (repositories owned by another uid), literal pathspecs and a
timeout. Caveat: filters configured in the repository's own config still run, as they would for the
user's own `git add`.
"""

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from api.errors import Conflict, InvalidRequest, NotFound

REF_PREFIX = "refs/kf/snapshots/"
AFTER_SUFFIX = "-after"
GIT_TIMEOUT_SECONDS = 300
# file_changed events carry diffs; a run that rewrites a huge file must not produce a huge event.
DIFF_MAX_CHARS = 64 * 1024
# Files larger than this are treated as binary in diffs (git's core.bigFileThreshold): no text diff.
DIFF_BIG_FILE_BYTES = 1024 * 1024
CONFLICT_PATHS_SHOWN = 5

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")
_OBJECT_ID_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_GITLINK_MODE = b"160000"
_IDENTITY = {"GIT_AUTHOR_NAME": "kf", "GIT_AUTHOR_EMAIL": "kf@localhost",
             "GIT_COMMITTER_NAME": "kf", "GIT_COMMITTER_EMAIL": "kf@localhost"}
# Per-invocation config: hooks and fsmonitor would run code on our behalf; split index and gc would
# write into the user's .git beyond objects and our ref; symlinks/filemode/autocrlf/ignorecase make
# the recorded tree exact on Linux whatever the repository's config says.
_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "core.splitIndex=false",
           "core.untrackedCache=false", "core.symlinks=true", "core.fileMode=true", "core.ignoreCase=false",
           "core.autocrlf=false", "core.safecrlf=false", "gc.auto=0", "maintenance.auto=false",
           "commit.gpgSign=false", "advice.addEmbeddedRepo=false")


class SnapshotError(RuntimeError):
    """Git failed or timed out (a corrupt repository, a full disk): not the caller's mistake."""


@dataclass(frozen=True)
class _Place:
    git_dir: Path
    top: Path  # the work tree git operates on
    prefix: str  # the project root relative to `top`, "" or "sub/dir" (posix)
    shadow: bool
    safe_dirs: tuple[str, ...]


def after_ref_name(run_id: str) -> str:
    """The ref name of the snapshot taken when run `run_id` ended."""
    return f"{run_id}{AFTER_SUFFIX}"


# --- running git ---------------------------------------------------------------------------------

def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ATTR_NOSYSTEM": "1",
                "GIT_TERMINAL_PROMPT": "0", "GIT_LITERAL_PATHSPECS": "1", "GIT_OPTIONAL_LOCKS": "0",
                "GIT_NO_REPLACE_OBJECTS": "1", "LC_ALL": "C", **_IDENTITY})
    ceilings = [str(p) for p in (Path(settings.KF_PROJECTS_ROOT), Path(settings.KF_DATA_DIR))]
    env["GIT_CEILING_DIRECTORIES"] = ":".join(ceilings)
    return env


def _run(args: Sequence[str], *, cwd: Path, safe_dirs: Sequence[str], place: _Place | None = None,
         index: Path | None = None, stdin: bytes | None = None, ok_codes: tuple[int, ...] = (0,),
         extra_config: Sequence[str] = (), literal: bool = True) -> subprocess.CompletedProcess[bytes]:
    cmd = ["git"]
    for item in (*_CONFIG, *extra_config, *(f"safe.directory={d}" for d in safe_dirs)):
        cmd += ["-c", item]
    if place is not None:
        cmd += [f"--git-dir={place.git_dir}", f"--work-tree={place.top}"]
    cmd += list(args)
    env = _base_env()
    if not literal:  # check-ignore takes paths, and refuses the literal pathspec magic
        del env["GIT_LITERAL_PATHSPECS"]
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    try:
        result = subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True,
                                timeout=GIT_TIMEOUT_SECONDS, check=False,
                                stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # run() has killed git by now
        raise SnapshotError(f"git {args[0]} did not finish within {GIT_TIMEOUT_SECONDS} s") from exc
    if result.returncode not in ok_codes:
        raise _failure(args, result)
    return result


def _git(place: _Place, *args: str, index: Path | None = None, stdin: bytes | None = None,
         ok_codes: tuple[int, ...] = (0,), extra_config: Sequence[str] = (),
         literal: bool = True) -> subprocess.CompletedProcess[bytes]:
    return _run(args, cwd=place.top, safe_dirs=place.safe_dirs, place=place, index=index, stdin=stdin,
                ok_codes=ok_codes, extra_config=extra_config, literal=literal)


def _out(place: _Place, *args: str, index: Path | None = None, stdin: bytes | None = None) -> str:
    return _git(place, *args, index=index, stdin=stdin).stdout.decode().strip()


def _failure(args: Sequence[str], result: subprocess.CompletedProcess[bytes]) -> SnapshotError:
    lines = [ln.strip() for ln in result.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
    detail = (errors or lines or [f"exit status {result.returncode}"])[0]
    return SnapshotError(f"git {args[0]} failed: {detail}"[:500])


@contextmanager
def _temp_index() -> Iterator[Path]:
    # The file must not exist yet: git creates it (read-tree / add), and it is never the user's index.
    with tempfile.TemporaryDirectory(prefix="kf-snapshot-") as folder:
        yield Path(folder) / "index"


# --- locating the repository ---------------------------------------------------------------------

def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidRequest(f"{what} must be 1-200 letters, digits, '_' or '-'.")
    return value


def _check_root(root: Path) -> Path:
    resolved = Path(root).resolve()
    if not resolved.is_dir():
        raise InvalidRequest("The project folder does not exist.")
    return resolved


def _ancestors(path: Path) -> tuple[str, ...]:
    return tuple(str(p) for p in (path, *path.parents))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _locate(root: Path, project_id: str) -> _Place:
    root = _check_root(root)
    _check_name(project_id, "project_id")
    safe = _ancestors(root)
    found = _run(["rev-parse", "--is-inside-work-tree", "--show-toplevel", "--absolute-git-dir"],
                 cwd=root, safe_dirs=safe, ok_codes=(0, 128))
    lines = found.stdout.decode("utf-8", "surrogateescape").splitlines()
    if found.returncode == 128 and b"not a git repository" in found.stderr:
        return _shadow(root, project_id)
    if lines[:1] == ["false"]:
        raise InvalidRequest("The project folder is inside a git directory, not a work tree.")
    if found.returncode != 0 or len(lines) != 3:
        # Not silently a shadow: a broken or unreadable repository must not hide the real one.
        raise _failure(["rev-parse"], found)
    top, git_dir = Path(lines[1]).resolve(), Path(lines[2])
    prefix = root.relative_to(top).as_posix() if root != top else ""
    place = _Place(git_dir=git_dir, top=top, prefix=prefix, shadow=False, safe_dirs=(*_ancestors(top), str(git_dir)))
    # An ignored project folder (kf's own var/ in a kf checkout, say) would be recorded as nothing.
    if prefix and _git(place, "check-ignore", "-q", "--", prefix, ok_codes=(0, 1), literal=False).returncode == 0:
        return _shadow(root, project_id)
    return place


def _shadow(root: Path, project_id: str) -> _Place:
    data_dir = Path(settings.KF_DATA_DIR).resolve()
    if _is_within(data_dir, root):
        raise InvalidRequest("The project folder contains kf's data folder; it cannot be snapshotted.")
    git_dir = data_dir / "shadow" / f"{project_id}.git"
    place = _Place(git_dir=git_dir, top=root, prefix="", shadow=True,
                   safe_dirs=(*_ancestors(root), str(git_dir)))
    if not (git_dir / "HEAD").is_file():
        git_dir.parent.mkdir(parents=True, exist_ok=True)
        _run(["init", "--quiet", "--bare", str(git_dir)], cwd=git_dir.parent, safe_dirs=place.safe_dirs)
        # Not bare: it is always used with --work-tree=<root>.
        _run([f"--git-dir={git_dir}", "config", "core.bare", "false"], cwd=git_dir.parent,
             safe_dirs=place.safe_dirs)
    return place


# --- trees ---------------------------------------------------------------------------------------

def _head(place: _Place) -> str | None:
    result = _git(place, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", ok_codes=(0, 1, 128))
    if result.returncode != 0:
        return None  # an empty repository (unborn branch) or the fresh shadow
    return result.stdout.decode().strip()


def _empty_tree(place: _Place) -> str:
    return _out(place, "mktree", stdin=b"")  # depends on the object format (sha1/sha256), so ask git


def _worktree_full_tree(place: _Place, index: Path) -> str:
    """The tree of HEAD with the project's part replaced by the files on disk, built in `index`."""
    head = _head(place)
    if head is not None:
        # Tracked files stay recorded even if ignored, as in the user's own `git add -A`.
        _git(place, "read-tree", head, index=index)
    pathspec = ["--", place.prefix] if place.prefix else []
    added = _git(place, "add", "-A", *pathspec, index=index, ok_codes=(0, 128))
    if added.returncode == 128 and b"did not match any files" not in added.stderr:
        raise _failure(["add"], added)
    return _out(place, "write-tree", index=index)


def _subtree(place: _Place, treeish: str) -> str:
    """The tree id of the project's part of `treeish` (the empty tree when it holds nothing there)."""
    spec = f"{treeish}^{{tree}}:{place.prefix}" if place.prefix else f"{treeish}^{{tree}}"
    result = _git(place, "rev-parse", "--verify", "--quiet", spec, ok_codes=(0, 1, 128))
    if result.returncode != 0:
        return _empty_tree(place)
    return result.stdout.decode().strip()


def _ref_commit(place: _Place, ref_name: str) -> str:
    _check_name(ref_name, "ref_name")
    result = _git(place, "rev-parse", "--verify", "--quiet", f"{REF_PREFIX}{ref_name}^{{commit}}", ok_codes=(0, 1, 128))
    if result.returncode != 0:
        raise NotFound(f"There is no snapshot '{ref_name}' for this project.")
    return result.stdout.decode().strip()


def _raw_changes(place: _Place, old_tree: str, new_tree: str, *, renames: bool) -> list[dict[str, Any]]:
    """`git diff-tree -r -z --raw` between two trees, parsed: mode/sha/status/paths as bytes."""
    args = ["diff-tree", "-r", "-z", "--raw", "--no-ext-diff", "-M" if renames else "--no-renames", old_tree, new_tree]
    fields = _git(place, *args).stdout.split(b"\0")
    changes: list[dict[str, Any]] = []
    i = 0
    while i < len(fields) and fields[i].startswith(b":"):
        old_mode, new_mode, old_sha, new_sha, status = fields[i][1:].split(b" ")
        if status[:1] in (b"R", b"C"):
            old_path, path = fields[i + 1], fields[i + 2]
            i += 3
        else:
            old_path = path = fields[i + 1]
            i += 2
        changes.append({"old_mode": old_mode, "new_mode": new_mode, "old_sha": old_sha, "new_sha": new_sha,
                        "status": status[:1], "old_path": old_path, "path": path})
    return changes


def _changed_paths(place: _Place, old_tree: str, new_tree: str) -> list[str]:
    return sorted(os.fsdecode(c["path"]) for c in _raw_changes(place, old_tree, new_tree, renames=False))


# --- public API ----------------------------------------------------------------------------------

def snapshot_take(*, root: Path, project_id: str, ref_name: str) -> str:
    """Record the project's working tree as a commit under refs/kf/snapshots/<ref_name>; its sha."""
    place = _locate(root, project_id)
    _check_name(ref_name, "ref_name")
    with _temp_index() as index:
        tree = _worktree_full_tree(place, index)
    head = _head(place)
    parents = ["-p", head] if head else []
    commit = _out(place, "commit-tree", "--no-gpg-sign", tree, *parents, "-m", f"kf snapshot {ref_name}")
    _git(place, "update-ref", "-m", f"kf snapshot {ref_name}", f"{REF_PREFIX}{ref_name}", commit)
    return commit


def snapshot_tree_id(*, root: Path, project_id: str) -> str:
    """The tree id of the project's files as they are now (for conflict checks)."""
    place = _locate(root, project_id)
    with _temp_index() as index:
        return _subtree(place, _worktree_full_tree(place, index))


def snapshot_ref_tree(*, root: Path, project_id: str, ref_name: str) -> str:
    """The tree id of the project's files in snapshot `ref_name`, comparable with snapshot_tree_id."""
    place = _locate(root, project_id)
    return _subtree(place, _ref_commit(place, ref_name))


def _remove_file(top: Path, rel: bytes) -> bool:
    target = os.path.join(os.fsencode(top), rel)
    # git never records a path beneath a symlink; re-check so a swapped-in symlinked folder cannot
    # make us delete outside the work tree.
    parent = os.path.realpath(os.path.dirname(target))
    top_b = os.fsencode(os.path.realpath(top))
    if parent != top_b and not parent.startswith(top_b + b"/"):
        return False
    try:
        if os.path.isdir(target) and not os.path.islink(target):
            return False  # a nested repository or a folder now: not ours to delete
        os.unlink(target)
    except FileNotFoundError:
        return False
    stop = os.fsencode(top)
    folder = os.path.dirname(target)
    while folder != stop and folder.startswith(stop + b"/"):
        try:
            os.rmdir(folder)  # only when empty, as git does after removing a file
        except OSError:
            break
        folder = os.path.dirname(folder)
    return True


def snapshot_restore(*, root: Path, project_id: str, ref_name: str, expected_tree: str | None,
                     force: bool) -> list[str]:
    """Put the project's files back as they were in snapshot `ref_name`; the paths changed.

    With `expected_tree` (e.g. snapshot_ref_tree of the run's after-snapshot) and not `force`, files
    that differ from it raise Conflict instead: someone edited them after the run ended.
    """
    if expected_tree is not None and not _OBJECT_ID_RE.fullmatch(expected_tree or ""):
        raise InvalidRequest("expected_tree must be a tree id.")
    place = _locate(root, project_id)
    snap_commit = _ref_commit(place, ref_name)
    snap_tree = _subtree(place, snap_commit)
    with _temp_index() as index:
        now_tree = _subtree(place, _worktree_full_tree(place, index))
    if expected_tree is not None and not force and now_tree != expected_tree:
        try:
            changed = _changed_paths(place, expected_tree, now_tree)
        except SnapshotError as exc:  # not a tree of this repository
            raise InvalidRequest("expected_tree is not a tree of this project's snapshots.") from exc
        shown = ", ".join(changed[:CONFLICT_PATHS_SHOWN])
        more = f" and {len(changed) - CONFLICT_PATHS_SHOWN} more" if len(changed) > CONFLICT_PATHS_SHOWN else ""
        raise Conflict(f"Files changed after the run ended: {shown}{more}. Roll back with force to discard "
                       "those changes.", details={"paths": changed[:50]})
    changes = [c for c in _raw_changes(place, now_tree, snap_tree, renames=False)
               if _GITLINK_MODE not in (c["old_mode"], c["new_mode"])]
    if not changes:
        return []
    prefix = os.fsencode(place.prefix + "/") if place.prefix else b""
    # Deletions first, so a file can take the place of a removed folder and vice versa.
    for change in changes:
        if change["new_mode"] == b"000000" or change["status"] == b"T":
            _remove_file(place.top, prefix + change["path"])
    to_write = [prefix + c["path"] for c in changes if c["new_mode"] != b"000000"]
    if to_write:
        with _temp_index() as index:
            if prefix:
                _git(place, "read-tree", f"--prefix={place.prefix}/", snap_tree, index=index)
            else:
                _git(place, "read-tree", snap_tree, index=index)
            # Only the changed paths are written, so untouched files keep their mtimes.
            _git(place, "checkout-index", "-f", "-z", "--stdin", index=index, stdin=b"\0".join(to_write) + b"\0")
    return sorted(os.fsdecode(c["path"]) for c in changes)


_STATUS = {b"A": "added", b"C": "added", b"D": "deleted", b"M": "modified", b"T": "modified", b"R": "renamed"}


def _split_patch(patch: bytes) -> list[bytes]:
    # Content lines of a patch start with ' ', '+', '-', '\\' or '@@', so a line starting with
    # "diff --git " is always the header of the next file, whatever the paths or contents.
    parts: list[bytes] = []
    for line in patch.splitlines(keepends=True):
        if line.startswith(b"diff --git ") or not parts:
            parts.append(line)
        else:
            parts[-1] += line
    return parts


def _truncate(text: str) -> tuple[str, bool]:
    if len(text) <= DIFF_MAX_CHARS:
        return text, False
    return text[:DIFF_MAX_CHARS] + f"\n… diff truncated at {DIFF_MAX_CHARS} characters\n", True


def snapshot_diff(*, root: Path, project_id: str, from_ref: str, to_ref: str) -> list[dict[str, Any]]:
    """The files that differ between two snapshots: [{path, status, diff, truncated, old_path?}].

    status is added|modified|deleted|renamed; diff is git's unified diff of that file ("Binary files
    … differ" for binary or big files), cut at DIFF_MAX_CHARS.
    """
    place = _locate(root, project_id)
    old_tree = _subtree(place, _ref_commit(place, from_ref))
    new_tree = _subtree(place, _ref_commit(place, to_ref))
    changes = _raw_changes(place, old_tree, new_tree, renames=True)
    if not changes:
        return []
    patch = _git(place, "diff-tree", "-r", "-p", "-M", "--no-ext-diff", "--no-textconv", "--no-color", old_tree,
                 new_tree, extra_config=(f"core.bigFileThreshold={DIFF_BIG_FILE_BYTES}",)).stdout
    parts = _split_patch(patch)
    # The same diff queue, so the same order; a type change (file <-> symlink) is two patch sections.
    sizes = [2 if c["status"] == b"T" else 1 for c in changes]
    aligned = len(parts) == sum(sizes)
    items: list[dict[str, Any]] = []
    start = 0
    for change, size in zip(changes, sizes, strict=True):
        if aligned:
            raw = b"".join(parts[start:start + size])
            start += size
        else:
            raw = _git(place, "diff-tree", "-r", "-p", "-M", "--no-ext-diff", "--no-textconv", "--no-color",
                       old_tree, new_tree, "--", os.fsdecode(change["old_path"]), os.fsdecode(change["path"]),
                       extra_config=(f"core.bigFileThreshold={DIFF_BIG_FILE_BYTES}",)).stdout
        diff, truncated = _truncate(raw.decode("utf-8", "replace"))
        item: dict[str, Any] = {"path": os.fsdecode(change["path"]), "status": _STATUS.get(change["status"], "modified"),
                                "diff": diff, "truncated": truncated}
        if change["status"] == b"R":
            item["old_path"] = os.fsdecode(change["old_path"])
        items.append(item)
    return items


_ZERO_OID = re.compile(rb"0+")
_GITLINK = b"160000"


def snapshot_file_hashes(*, root: Path, project_id: str, from_ref: str, to_ref: str) -> list[dict[str, Any]]:
    """The files that differ between two snapshots with the SHA-256 of their content on each side:
    [{path, before_sha256 (None: added), after_sha256 (None: deleted)}], sorted by path. (Git's own ids
    are SHA-1 of a header plus the content; receipts want a plain content hash anyone can recompute.)
    Submodules (gitlinks) have no content here and are left out."""
    place = _locate(root, project_id)
    old_tree = _subtree(place, _ref_commit(place, from_ref))
    new_tree = _subtree(place, _ref_commit(place, to_ref))
    changes = [c for c in _raw_changes(place, old_tree, new_tree, renames=False)
               if _GITLINK not in (c["old_mode"], c["new_mode"])]
    blobs = sorted({sha for c in changes for sha in (c["old_sha"], c["new_sha"]) if not _ZERO_OID.fullmatch(sha)})
    digests: dict[bytes, str] = {}
    if blobs:
        out = _git(place, "cat-file", "--batch", stdin=b"".join(sha + b"\n" for sha in blobs)).stdout
        pos = 0
        for sha in blobs:
            header_end = out.index(b"\n", pos)
            size = int(out[pos:header_end].split(b" ")[2])
            content = out[header_end + 1:header_end + 1 + size]
            digests[sha] = hashlib.sha256(content).hexdigest()
            pos = header_end + 1 + size + 1
    return sorted(({"path": os.fsdecode(c["path"]), "before_sha256": digests.get(c["old_sha"]),
                    "after_sha256": digests.get(c["new_sha"])} for c in changes), key=lambda f: f["path"])
