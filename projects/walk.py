"""The files a rescan indexes: what git would track (respecting every .gitignore), regular files only,
symlinks left out."""

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pathspec

GIT_TIMEOUT = 120


def is_git_worktree(root: Path) -> bool:
    return (root / ".git").exists()


def _git_files(root: Path) -> Iterator[str]:
    result = subprocess.run(
        ["git", "-c", "core.quotePath=off", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, timeout=GIT_TIMEOUT, check=True,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    seen: set[str] = set()
    for raw in result.stdout.split(b"\0"):
        if raw:
            path = os.fsdecode(raw)
            if path not in seen:
                seen.add(path)
                yield path


def _ignore_spec(folder: Path) -> pathspec.PathSpec | None:
    try:
        lines = (folder / ".gitignore").read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def _plain_files(root: Path) -> Iterator[str]:
    """os.walk with nested .gitignore files applied relative to the folder that holds them."""
    specs: list[tuple[str, pathspec.PathSpec]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel_folder = os.path.relpath(folder, root)
        rel_folder = "" if rel_folder == "." else rel_folder.replace(os.sep, "/")
        specs = [(base, spec) for base, spec in specs if rel_folder == base or rel_folder.startswith(base + "/") or base == ""]
        spec = _ignore_spec(Path(folder))
        if spec is not None:
            specs.append((rel_folder, spec))

        def ignored(rel: str, is_dir: bool) -> bool:
            for base, spec in specs:
                local = rel[len(base) + 1:] if base else rel
                if spec.match_file(local + ("/" if is_dir else "")):
                    return True
            return False

        dirs[:] = sorted(d for d in dirs if d != ".git"
                         and not ignored(f"{rel_folder}/{d}" if rel_folder else d, True))
        for name in sorted(files):
            rel = f"{rel_folder}/{name}" if rel_folder else name
            if not ignored(rel, False):
                yield rel


def project_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of each regular, not ignored file."""
    source = _git_files(root) if is_git_worktree(root) else _plain_files(root)
    for rel in source:
        try:
            info = os.lstat(root / rel)
        except OSError:
            continue  # listed by git but deleted from the working tree
        if stat.S_ISREG(info.st_mode):
            yield rel, info


def git_head(root: Path) -> str:
    if not is_git_worktree(root):
        return ""
    result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                            timeout=GIT_TIMEOUT, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""
