"""Safe access to files inside a project root.

Every read opens the file first and then checks what was actually opened (through /proc/self/fd),
so a symlink swapped in between a check and the open cannot lead outside the root.
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from api.errors import InvalidRequest, NotFound, PayloadTooLarge


def clean_relative(raw: str, *, allow_root: bool = False) -> str:
    """A normalised relative path ('' for the root when allowed). Refuses `..`, absolute paths, NUL."""
    if "\x00" in raw:
        raise InvalidRequest("The path contains a NUL byte.", details={"path": ["NUL byte"]})
    if raw.startswith("/") or raw.startswith("\\") or (len(raw) > 1 and raw[1] == ":"):
        raise InvalidRequest("The path must be relative to the project root.", details={"path": ["absolute path"]})
    parts = [p for p in PurePosixPath(raw.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest("The path may not contain '..'.", details={"path": ["'..' is not allowed"]})
    if not parts and not allow_root:
        raise InvalidRequest("A file path is required.", details={"path": ["required"]})
    return "/".join(parts)


def _real_path_of_fd(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def path_inside(real: str, root: str) -> bool:
    """Whether the resolved path `real` is `root` or lies under it (both absolute and resolved)."""
    return real == root or real.startswith(root.rstrip("/") + "/")


@dataclass
class OpenedFile:
    path: str
    size: int
    data: bytes


def read_file(root: str, rel: str, *, max_bytes: int) -> OpenedFile:
    rel = clean_relative(rel)
    real_root = os.path.realpath(root)
    try:
        fd = os.open(os.path.join(real_root, rel), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound("No such file in this project.") from exc
    except (NotADirectoryError, PermissionError, OSError) as exc:
        raise NotFound("No such file in this project.") from exc
    try:
        if not path_inside(_real_path_of_fd(fd), real_root):
            raise InvalidRequest("The path leads outside the project root.", details={"path": ["outside the root"]})
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidRequest("The path is a directory; use the tree endpoint.", details={"path": ["directory"]})
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequest("The path is not a regular file.", details={"path": ["not a regular file"]})
        if info.st_size > max_bytes:
            raise PayloadTooLarge(f"The file is {info.st_size} bytes; files over {max_bytes} bytes are not shown.")
        chunks, remaining = [], max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew while we read
            raise PayloadTooLarge(f"Files over {max_bytes} bytes are not shown.")
        return OpenedFile(path=rel, size=len(data), data=data)
    finally:
        os.close(fd)


@dataclass
class DirEntry:
    name: str
    path: str
    type: str
    size: int
    has_children: bool


HIDDEN_DIRS = {".git"}


def list_dir(root: str, rel: str) -> list[DirEntry]:
    """One level of the tree, directories first, each with whether it has children."""
    rel = clean_relative(rel, allow_root=True)
    real_root = os.path.realpath(root)
    try:
        fd = os.open(os.path.join(real_root, rel) if rel else real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise NotFound("No such folder in this project.") from exc
    except OSError as exc:
        raise NotFound("No such folder in this project.") from exc
    try:
        real = _real_path_of_fd(fd)
        if not path_inside(real, real_root):
            raise InvalidRequest("The path leads outside the project root.", details={"path": ["outside the root"]})
        entries: list[DirEntry] = []
        with os.scandir(fd) as it:
            for entry in it:
                if entry.name in HIDDEN_DIRS:
                    continue
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    info = os.stat(entry.name, dir_fd=fd)
                except OSError:
                    continue  # a dangling symlink
                target_inside = not entry.is_symlink() or path_inside(os.path.realpath(os.path.join(real, entry.name)), real_root)
                if not target_inside:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    entries.append(DirEntry(entry.name, child, "dir", 0, _has_children(os.path.join(real, entry.name))))
                elif stat.S_ISREG(info.st_mode):
                    entries.append(DirEntry(entry.name, child, "file", info.st_size, False))
        entries.sort(key=lambda e: (e.type != "dir", e.name.lower(), e.name))
        return entries
    finally:
        os.close(fd)


def _has_children(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return any(e.name not in HIDDEN_DIRS for e in it)
    except OSError:
        return False


def resolve_under(base: Path, candidate: str) -> Path:
    """`candidate` (absolute, or relative to base) resolved through symlinks; must lie under base."""
    if "\x00" in candidate:
        raise InvalidRequest("The path contains a NUL byte.", details={"path": ["NUL byte"]})
    path = Path(candidate)
    if not path.is_absolute():
        path = base / path
    try:
        resolved = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        raise InvalidRequest("No such folder on the server.", details={"path": ["does not exist"]}) from exc
    if not resolved.is_relative_to(base.resolve()):
        raise InvalidRequest(f"Projects must lie under the projects root ({base}).",
                             details={"path": ["outside the projects root"]})
    if not resolved.is_dir():
        raise InvalidRequest("The path is not a folder.", details={"path": ["not a folder"]})
    return resolved
