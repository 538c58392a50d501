"""The agent's tool registry (DESIGN decision 5): one set of tools that the agent loop offers its model
and that /api/mcp serves to outside MCP clients.

Every tool is a `Tool` in REGISTRY: a name, a description written for a model, an input schema (the
subset of JSON Schema draft 2020-12 that both OpenAI function calling and MCP accept: object,
properties, required, additionalProperties, string/integer/boolean/array, enum, minimum/maximum,
minLength/maxLength), whether it changes the project (`mutates`) and a handler.

`tool_call(ctx, name, arguments_json)` is the one way in. It never raises for anything the model can
get wrong (bad JSON, unknown tool, a wrong field, a path out of the project, a file that does not
match): those come back as ToolResult(ok=False) with a message the model can act on. Every result
and every event is masked with the run's secret values and cut to a size a model can take.

Paths go through the same checks as the file API (projects.paths): no `..`, no absolute paths, no NUL,
and what was actually opened is checked to lie under the root, so a symlink cannot lead outside.
Writes open each parent folder as a file descriptor, check it, and write a temporary file in it that
is then renamed over the target: a reader never sees half a file and a swapped symlink cannot
redirect the write.

Commands (run_command, run_tests) are shell jobs (shell.services): created here and run in this
thread by the same service the Celery task calls, so they stream into their own job log like any
other command, and the run's cancel kills their process group.
"""

import difflib
import hashlib
import json
import os
import secrets as random_names
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connections
from jsonschema import Draft202012Validator

from accounts.models import User
from api.errors import ApiError, InvalidRequest, NotFound, PayloadTooLarge
from projects import paths
from projects.models import Finding, Project
from projects.search import search_project
from projects.selectors import symbol_search
from projects.services import file_read
from secrets_app.masking import mask_json, mask_text
from shell import services as shell_services
from shell import testrunners
from streams.models import Event, Job
from streams.services import job_cancel

# What one tool result may hand the model; more is cut with a note that says how much.
OUTPUT_MAX_CHARS = 30_000
DIFF_MAX_CHARS = 64 * 1024  # of a file_changed event's diff
ARGUMENTS_MAX_CHARS = 8 * 1024 * 1024  # the raw JSON; write_file's content has its own (byte) cap
ERROR_DETAIL_CHARS = 300  # of one schema complaint (they can quote the offending value)
LIST_MAX_ENTRIES = 2000
SEARCH_DEFAULT_LIMIT = 50
SEARCH_MAX_LIMIT = 500
SYMBOLS_LIMIT = 100
NEAREST_MAX_LINES = 20  # of the closest text quoted when an edit's search block does not match
CANCEL_POLL_SECONDS = 0.1
PROTECTED_DIRS = {".git"}  # the snapshots live there: the agent may not write into it


@dataclass
class ToolContext:
    """What a tool call may use. `should_cancel` is also asked from a helper thread while a command
    runs, so it must be safe to call from another thread (a database read or a flag is)."""

    user: User
    project: Project
    job_id: str  # the run's streams Job (events go there through `emit`)
    emit: Callable[[str, dict[str, Any]], None]
    before_write: Callable[[], None]
    secrets_mask: list[str] = field(default_factory=list, repr=False)
    should_cancel: Callable[[], bool] = lambda: False


@dataclass
class ToolResult:
    ok: bool
    content: str  # what the model reads
    data: dict[str, Any] = field(default_factory=dict)  # the same, structured (events, MCP clients)


Handler = Callable[[ToolContext, dict[str, Any]], ToolResult]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    mutates: bool
    handler: Handler
    keep_tail: bool = False  # when cut, keep the end too (a command's result is at its end)

    @property
    def validator(self) -> Draft202012Validator:
        return _VALIDATORS[self.name]


REGISTRY: dict[str, Tool] = {}
_VALIDATORS: dict[str, Draft202012Validator] = {}


def _register(tool: Tool) -> Tool:
    Draft202012Validator.check_schema(tool.input_schema)
    REGISTRY[tool.name] = tool
    _VALIDATORS[tool.name] = Draft202012Validator(tool.input_schema)
    return tool


def openai_tools() -> list[dict[str, Any]]:
    """The `tools=` argument of a chat completions request."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.input_schema}} for t in REGISTRY.values()]


def mcp_tools() -> list[dict[str, Any]]:
    """The `tools` of an MCP tools/list reply."""
    return [{"name": t.name, "description": t.description, "inputSchema": t.input_schema,
             "annotations": {"readOnlyHint": not t.mutates}} for t in REGISTRY.values()]


# --- the way in ----------------------------------------------------------------------------------

def tool_call(ctx: ToolContext, name: str, arguments_json: str) -> ToolResult:
    tool = REGISTRY.get(name) if isinstance(name, str) else None
    if tool is None:
        return _masked(ctx, ToolResult(False, f"Unknown tool {str(name)[:100]!r}. Available tools: "
                                              f"{', '.join(REGISTRY)}.", {"error": "unknown_tool"}))
    arguments, problem = _arguments_parse(tool, arguments_json)
    if problem:
        return _masked(ctx, ToolResult(False, problem, {"error": "invalid_arguments"}))
    try:
        if tool.mutates:
            # The loop snapshots the project before its first write; if that fails, nothing is written.
            ctx.before_write()
        result = tool.handler(ctx, arguments)
    except ApiError as exc:
        result = ToolResult(False, f"{name} failed: {exc.message}", {"error": exc.default_code,
                                                                     "details": exc.details or {}})
    except OSError as exc:
        result = ToolResult(False, f"{name} failed: {exc.strerror or exc}", {"error": "os_error"})
    result = _masked(ctx, result)
    result.content = _cut(result.content, keep_tail=tool.keep_tail)
    return result


def _arguments_parse(tool: Tool, arguments_json: str) -> tuple[dict[str, Any], str | None]:
    if not isinstance(arguments_json, str):
        return {}, "The arguments must be a JSON object, given as a string."
    if len(arguments_json) > ARGUMENTS_MAX_CHARS:
        return {}, f"The arguments are longer than {ARGUMENTS_MAX_CHARS} characters."
    if not arguments_json.strip():
        arguments_json = "{}"  # some models send "" for a call without arguments
    try:
        arguments = json.loads(arguments_json)
    except (ValueError, RecursionError) as exc:
        return {}, f"The arguments of {tool.name} are not valid JSON ({exc}). Send one JSON object."
    if not isinstance(arguments, dict):
        return {}, f"The arguments of {tool.name} must be a JSON object, not {type(arguments).__name__}."
    complaints = []
    for error in sorted(tool.validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.path]):
        where = ".".join(str(p) for p in error.path)
        complaints.append(f"{where}: {error.message}"[:ERROR_DETAIL_CHARS] if where
                          else error.message[:ERROR_DETAIL_CHARS])
    if complaints:
        properties = ", ".join(f"{k}{'' if k in tool.input_schema.get('required', []) else '?'}"
                               for k in tool.input_schema["properties"])
        return {}, (f"Invalid arguments for {tool.name}: " + "; ".join(complaints[:5])
                    + f". Expected {{{properties}}}.")
    if _has_lone_surrogate(arguments):
        return {}, f"The arguments of {tool.name} contain invalid Unicode (a lone surrogate)."
    return arguments, None


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _masked(ctx: ToolContext, result: ToolResult) -> ToolResult:
    if not ctx.secrets_mask:
        return result
    return ToolResult(result.ok, mask_text(result.content, ctx.secrets_mask),
                      mask_json(result.data, ctx.secrets_mask))


def _emit(ctx: ToolContext, type: str, data: dict[str, Any]) -> None:
    ctx.emit(type, mask_json(data, ctx.secrets_mask) if ctx.secrets_mask else data)


def _cut(text: str, *, keep_tail: bool, limit: int | None = None) -> str:
    limit = OUTPUT_MAX_CHARS if limit is None else limit
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    note = f"[… {cut} of {len(text)} characters cut here …]"
    if keep_tail:
        head = limit // 4
        return f"{text[:head]}\n{note}\n{text[len(text) - (limit - head):]}"
    return f"{text[:limit]}\n{note}"


# --- paths ---------------------------------------------------------------------------------------

def _relative(raw: str, *, allow_root: bool = False) -> str:
    """The file API's path check, plus: nothing inside .git (the snapshots live there, and its config
    may hold credentials that must not go to a model)."""
    rel = paths.clean_relative(raw, allow_root=allow_root)
    if any(part in PROTECTED_DIRS for part in rel.split("/")):
        raise InvalidRequest(f"{rel} is inside a .git folder, which the agent may not use.",
                             details={"path": ["inside .git"]})
    return rel


def _real_root(project: Project) -> str:
    return os.path.realpath(project.root)


def _fd_inside(fd: int, real_root: str) -> bool:
    return paths.path_inside(os.readlink(f"/proc/self/fd/{fd}"), real_root)


def _parent_open(project: Project, rel: str, *, create: bool) -> int:
    """A descriptor of `rel`'s folder, each level opened from the one before and checked to lie under
    the root before anything is made in it. Missing folders are made when `create`."""
    real_root = _real_root(project)
    fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.split("/")[:-1]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise NotFound(f"No such folder in this project: {part}.") from None
                os.mkdir(part, 0o777, dir_fd=fd)
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except NotADirectoryError:
                raise InvalidRequest(f"{part} is a file, not a folder.", details={"path": ["not a folder"]}) from None
            os.close(fd)
            fd = child
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not paths.path_inside(real, real_root):
                raise InvalidRequest("The path leads outside the project root.", details={"path": ["outside the root"]})
            if any(p in PROTECTED_DIRS for p in real[len(real_root):].split("/")):
                # A link to .git inside the project: the same refusal as a path that names it.
                raise InvalidRequest(f"{rel} leads into a .git folder, which the agent may not use.",
                                     details={"path": ["inside .git"]})
        return fd
    except BaseException:
        os.close(fd)
        raise


@dataclass
class _Existing:
    data: bytes | None  # None: the file does not exist yet
    mode: int


def _existing_read(parent_fd: int, name: str, rel: str) -> _Existing:
    try:
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return _Existing(None, 0o644)
    if stat.S_ISLNK(info.st_mode):
        # Replacing the link would silently change what it is; following it could leave the root.
        raise InvalidRequest(f"{rel} is a symbolic link: write the file it points to instead.",
                             details={"path": ["symbolic link"]})
    if stat.S_ISDIR(info.st_mode):
        raise InvalidRequest(f"{rel} is a folder.", details={"path": ["directory"]})
    if not stat.S_ISREG(info.st_mode):
        raise InvalidRequest(f"{rel} is not a regular file.", details={"path": ["not a regular file"]})
    maximum = settings.KF_FILE_MAX_BYTES
    if info.st_size > maximum:
        raise PayloadTooLarge(f"{rel} is {info.st_size} bytes; files over {maximum} bytes cannot be edited here.")
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return _Existing(b"".join(chunks), stat.S_IMODE(info.st_mode))


def _atomic_write(parent_fd: int, name: str, data: bytes, mode: int) -> None:
    tmp = f".{name[:100]}.kf-{random_names.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=parent_fd)
        except OSError:
            pass
        raise


def _text_of(data: bytes, rel: str) -> str:
    if b"\x00" in data[:8192]:
        raise InvalidRequest(f"{rel} is a binary file; it cannot be edited as text.", details={"path": ["binary"]})
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{rel} is not UTF-8 text; it cannot be edited as text.",
                             details={"path": ["binary"]}) from None


def _diff(rel: str, before: str | None, after: str) -> tuple[str, bool]:
    lines = difflib.unified_diff((before or "").splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile="/dev/null" if before is None else f"a/{rel}", tofile=f"b/{rel}")
    out = []
    for line in lines:
        # As git shows it: a last line without a newline would otherwise run into the next one.
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    diff = "".join(out)
    if len(diff) > DIFF_MAX_CHARS:
        return _cut(diff, keep_tail=False, limit=DIFF_MAX_CHARS), True
    return diff, False


def _write(ctx: ToolContext, rel: str, new_text: str, *, expect_existing: bool,
           edit: Callable[[str], str] | None = None) -> ToolResult:
    """Writes `new_text` (or edit(old text)) to rel, emits file_changed, returns what changed."""
    name = rel.rsplit("/", 1)[-1]
    parent_fd = _parent_open(ctx.project, rel, create=not expect_existing)
    try:
        existing = _existing_read(parent_fd, name, rel)
        if existing.data is None and expect_existing:
            raise NotFound(f"No such file in this project: {rel}.")
        before: str | None = None
        if existing.data is not None:
            if edit is not None:
                before = _text_of(existing.data, rel)
                new_text = edit(before)
            else:
                try:
                    before = _text_of(existing.data, rel)
                except InvalidRequest:
                    before = "(binary content)\n"
        if "\x00" in new_text:
            raise InvalidRequest("The content contains a NUL byte; these tools write text files only.",
                                 details={"content": ["NUL byte"]})
        data = new_text.encode("utf-8")
        maximum = settings.KF_FILE_MAX_BYTES
        if len(data) > maximum:
            raise PayloadTooLarge(f"The new content is {len(data)} bytes; files over {maximum} bytes cannot be "
                                  "written here.")
        if existing.data == data:
            return ToolResult(True, f"{rel} already has this content; nothing changed.",
                              {"path": rel, "changed": False})
        _atomic_write(parent_fd, name, data, existing.mode)
    finally:
        os.close(parent_fd)
    diff, diff_truncated = _diff(rel, before, new_text)
    facts = {"path": rel, "change": "added" if existing.data is None else "modified",
             "created": existing.data is None, "bytes": len(data),
             "before_sha256": hashlib.sha256(existing.data).hexdigest() if existing.data is not None else None,
             "after_sha256": hashlib.sha256(data).hexdigest()}
    _emit(ctx, "file_changed", {**facts, "diff": diff, "diff_truncated": diff_truncated})
    added = sum(1 for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    verb = "Created" if existing.data is None else "Updated"
    return ToolResult(True, f"{verb} {rel} ({len(data)} bytes, +{added} -{removed} lines).",
                      {**facts, "changed": True, "added_lines": added, "removed_lines": removed})


# --- read tools ----------------------------------------------------------------------------------

def list_dir_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    rel = _relative(args.get("path", ""), allow_root=True)
    entries = paths.list_dir(ctx.project.root, rel)
    shown = entries[:LIST_MAX_ENTRIES]
    lines = [f"{e.name}/" if e.type == "dir" else f"{e.name}  ({e.size} bytes)" for e in shown]
    if len(entries) > len(shown):
        lines.append(f"[… {len(entries) - len(shown)} more entries not shown]")
    header = f"{rel or '.'}: {len(entries)} entries" + ("" if entries else " (empty folder)")
    return ToolResult(True, "\n".join([header, *lines]), {
        "path": rel, "entries": [{"name": e.name, "path": e.path, "type": e.type, "size": e.size} for e in shown],
        "truncated": len(entries) > len(shown)})


def read_file_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    rel = _relative(args["path"])
    opened = file_read(project=ctx.project, path=rel)
    if opened["binary"]:
        raise InvalidRequest(f"{rel} is a binary file ({opened['size']} bytes); it is not shown.",
                             details={"path": ["binary"]})
    lines = opened["content"].splitlines(keepends=True)
    total = len(lines)
    start = int(args.get("start_line", 1))
    end = min(int(args.get("end_line", total or 1)), total)
    if total == 0:
        return ToolResult(True, f"{rel} is empty.", {"path": rel, "total_lines": 0, "start_line": 0,
                                                     "end_line": 0, "sha256": opened["sha256"]})
    if start > total:
        raise InvalidRequest(f"start_line {start} is past the end: {rel} has {total} lines.",
                             details={"start_line": ["past the end"]})
    if end < start:
        raise InvalidRequest("end_line must not be before start_line.", details={"end_line": ["before start_line"]})
    width = len(str(end))
    header = (f"{rel} (lines {start}-{end} of {total}; each line starts with its number and a tab, "
              "which are not part of the file)")
    out: list[str] = [header]
    used = len(out[0])
    last = start - 1
    for number in range(start, end + 1):
        line = f"{number:>{width}}\t{lines[number - 1].rstrip(chr(10)).rstrip(chr(13))}"
        if used + len(line) + 1 > OUTPUT_MAX_CHARS - 200 and number > start:
            break
        out.append(line)
        used += len(line) + 1
        last = number
    if last < end:
        out.append(f"[… cut at line {last}: {end - last} more lines in the range; read on with "
                   f"start_line={last + 1}]")
    return ToolResult(True, "\n".join(out), {"path": rel, "total_lines": total, "start_line": start,
                                             "end_line": last, "sha256": opened["sha256"]})


def search_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    limit = int(args.get("limit", SEARCH_DEFAULT_LIMIT))
    result = search_project(project=ctx.project, q=args["query"], regex=bool(args.get("regex", False)),
                            case=bool(args.get("case", True)), glob=args.get("glob") or None, limit=limit)
    lines = [f"{i['path']}:{i['line']}:{i['column']}: {i['preview']}" for i in result.items]
    if not lines:
        lines = ["No matches (the search reads the index of the last rescan)."]
    if result.truncated:
        lines.append(f"[more matches than the {len(result.items)} shown: narrow the query or the glob]")
    return ToolResult(True, "\n".join(lines), {"items": result.items, "truncated": result.truncated})


def symbols_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    rows, truncated = symbol_search(project=ctx.project, q=args["name"], mode=args.get("mode", "prefix"),
                                    kind=args.get("kind") or None, limit=SYMBOLS_LIMIT)
    items = [{"name": s.name, "kind": s.kind, "path": s.path, "line": s.line, "end_line": s.end_line,
              "container": s.container, "language": s.language} for s in rows]
    lines = [f"{s['kind']} {s['container'] + '.' if s['container'] else ''}{s['name']}  {s['path']}:{s['line']}"
             for s in items] or ["No symbols found."]
    if truncated:
        lines.append(f"[more than {SYMBOLS_LIMIT} symbols: be more specific]")
    return ToolResult(True, "\n".join(lines), {"items": items, "truncated": truncated})


# --- write tools ---------------------------------------------------------------------------------

def write_file_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return _write(ctx, _relative(args["path"]), args["content"], expect_existing=False)


def _nearest(text: str, search: str) -> str:
    """The lines of `text` most like `search`, numbered, to show the model what is really there."""
    lines = text.splitlines()
    wanted = search.splitlines() or [search]
    size = max(1, min(len(wanted), NEAREST_MAX_LINES))
    if not lines:
        return "(the file is empty)"
    target = "\n".join(wanted[:size]).strip()
    windows = [(i, "\n".join(lines[i:i + size]).strip()) for i in range(max(1, len(lines) - size + 1))]
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    scored = []
    for i, window in windows:
        matcher.set_seq1(window)
        scored.append((matcher.quick_ratio(), i, window))
    scored.sort(key=lambda s: -s[0])
    best_i, best_ratio = 0, -1.0
    for _, i, window in scored[:25]:
        matcher.set_seq1(window)
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best_i, best_ratio = i, ratio
    width = len(str(best_i + size))
    return "\n".join(f"{n + 1:>{width}}\t{lines[n]}" for n in range(best_i, min(len(lines), best_i + size)))


def edit_file_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    rel = _relative(args["path"])
    search, replace = args["search"], args["replace"]
    count = args.get("count")

    def edit(before: str) -> str:
        find, put = search, replace
        found = before.count(find)
        if found == 0 and "\r\n" in before and "\r\n" not in find and "\n" in find:
            # The model writes "\n"; the file uses CRLF: the same block in the file's own line endings.
            find, put = find.replace("\n", "\r\n"), put.replace("\n", "\r\n")
            found = before.count(find)
        if found == 0:
            hint = ""
            if " ".join(search.split()) and " ".join(search.split()) in " ".join(before.split()):
                hint = " It would match if whitespace were ignored: copy the indentation and line breaks exactly."
            raise InvalidRequest(
                f"The search text was not found in {rel}.{hint} The closest lines in the file are:\n"
                f"{_nearest(before, search)}\nCopy the text exactly (without the line numbers and tab) and try again.",
                details={"search": ["no match"]})
        if count is None and found > 1:
            raise InvalidRequest(
                f"The search text occurs {found} times in {rel}. Add surrounding lines to the search text so that "
                "it matches once, or set count to the number of occurrences to replace them all.",
                details={"search": [f"{found} matches"]})
        if count is not None and found != count:
            raise InvalidRequest(f"count is {count} but the search text occurs {found} times in {rel}; "
                                 "nothing was changed.", details={"count": [f"{found} matches"]})
        return before.replace(find, put)

    if search == replace:
        raise InvalidRequest("search and replace are the same; nothing to change.", details={"replace": ["same"]})
    return _write(ctx, rel, "", expect_existing=True, edit=edit)


def report_finding_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    rel = _relative(args["path"])
    real_root = _real_root(ctx.project)
    try:
        fd = os.open(os.path.join(real_root, rel), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise NotFound(f"No such file in this project: {rel}.") from None
    try:
        if not _fd_inside(fd, real_root):
            raise InvalidRequest("The path leads outside the project root.", details={"path": ["outside the root"]})
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidRequest(f"{rel} is not a regular file.", details={"path": ["not a regular file"]})
    finally:
        os.close(fd)
    finding = {"path": rel, "line": int(args["line"]), "rule": args["rule"], "severity": args["severity"],
               "message": args["message"]}
    _emit(ctx, "finding", finding)
    return ToolResult(True, f"Recorded {finding['severity']} {finding['rule']} at {rel}:{finding['line']}.", finding)


# --- commands ------------------------------------------------------------------------------------

def _shell_job_run(ctx: ToolContext, job: Job) -> Job:
    """Runs the job here (shell_execute, as the Celery task does). A helper thread asks should_cancel
    and raises the job's cancel flag, which the runner polls and answers by killing the group."""
    stop = threading.Event()

    def watch() -> None:
        try:
            while not stop.wait(CANCEL_POLL_SECONDS):
                if ctx.should_cancel():
                    job_cancel(job=job)
                    return
        finally:
            connections.close_all()  # this thread's own connections only (they are per thread)

    watcher = threading.Thread(target=watch, name=f"kf-tool-cancel-{job.pk}", daemon=True)
    if ctx.should_cancel():
        job_cancel(job=job)
    watcher.start()
    try:
        shell_services.shell_execute(job_id=job.pk, mask=ctx.secrets_mask)
    finally:
        stop.set()
        watcher.join()
    return Job.objects.get(pk=job.pk)


def _shell_output(job: Job) -> str:
    parts = []
    for type, data in Event.objects.filter(job_id=job.pk, type__in=("stdout", "stderr", "truncated")).order_by(
            "seq").values_list("type", "data").iterator():
        parts.append(f"\n[{data.get('message', 'output truncated')}]\n" if type == "truncated" else data.get("text", ""))
    return "".join(parts)


def _shell_result(job: Job, header: str, extra: list[str] | None = None) -> ToolResult:
    result = job.result or {}
    output = _shell_output(job)
    status = job.status
    if status == Job.Status.CANCELLED:
        summary = "cancelled: the run is being stopped; the command was killed"
    elif result.get("timed_out"):
        summary = f"killed: {result.get('error', 'timed out')}"
    elif result.get("exit_code") is None and result.get("error"):
        summary = f"failed to run: {result['error']}"
    elif result.get("exit_code") is None:
        summary = f"killed by {result.get('signal') or 'a signal'}"
    else:
        summary = f"exit code {result['exit_code']}"
    lines = [header, output.rstrip("\n") if output else "(no output)",
             f"[{summary}; {result.get('duration_ms', 0)} ms]", *(extra or [])]
    ran = status != Job.Status.CANCELLED and not result.get("timed_out") and result.get("exit_code") is not None
    data = {"shell_job_id": job.pk, "status": status, "exit_code": result.get("exit_code"),
            "signal": result.get("signal"), "timed_out": bool(result.get("timed_out")),
            "duration_ms": result.get("duration_ms"), "output_truncated": bool(result.get("truncated"))}
    return ToolResult(ran, "\n".join(lines), data)


def run_command_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    job = shell_services.shell_run_start(user=ctx.user, project=ctx.project, command=args["command"],
                                         cwd=args.get("cwd"), timeout_s=args.get("timeout_s"), queue=False,
                                         extra_params={"agent_job_id": ctx.job_id})
    job = _shell_job_run(ctx, job)
    rel = job.params["cwd"]
    return _shell_result(job, f"$ {job.params['command']}" + (f"   (in {rel})" if rel else ""))


def run_tests_run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    job = shell_services.shell_test_start(user=ctx.user, project=ctx.project, runner=args.get("runner"),
                                          args=args.get("args"), cwd=args.get("cwd"),
                                          timeout_s=args.get("timeout_s"), queue=False,
                                          extra_params={"agent_job_id": ctx.job_id})
    job = _shell_job_run(ctx, job)
    result = job.result or {}
    extra = []
    if result.get("passed") is not None:
        extra.append(f"Tests: {result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped, "
                     f"{result['errors']} errors.")
        for failure in result.get("failures") or []:
            where = f" ({failure['path']}:{failure['line']})" if failure.get("path") else ""
            extra.append(f"FAILED {failure['name']}{where}: {failure['message'][:500]}")
    params = job.params
    outcome = _shell_result(job, f"$ {params['command']}   (runner {params['runner']}: {params['runner_reason']})",
                            extra)
    outcome.data.update({key: result.get(key) for key in ("runner", "passed", "failed", "skipped", "errors",
                                                          "failures")})
    return outcome


# --- the registry --------------------------------------------------------------------------------

def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


PATH_HELP = "A path relative to the project root, with '/' separators (no '..', not absolute)."

_register(Tool(
    name="list_dir",
    description="List one folder of the project: sub-folders (ending in '/') first, then files with their sizes. "
                "The .git folder and symlinks leading out of the project are not shown.",
    input_schema=_object({"path": _string(PATH_HELP + " Empty or '.' for the root.", maxLength=4096)}, []),
    mutates=False, handler=list_dir_run))

_register(Tool(
    name="read_file",
    description="Read a text file of the project, optionally only lines start_line..end_line (1-based, inclusive). "
                "Each line of the output starts with its number and a tab, which are not part of the file. "
                "Binary files are refused.",
    input_schema=_object({"path": _string(PATH_HELP, minLength=1, maxLength=4096),
                          "start_line": {"type": "integer", "minimum": 1, "description": "First line (default 1)."},
                          "end_line": {"type": "integer", "minimum": 1, "description": "Last line (default: the end)."}},
                         ["path"]),
    mutates=False, handler=read_file_run))

_register(Tool(
    name="search",
    description="Search the project's files for a text (or a Python regular expression with regex=true), line by "
                "line. Returns path:line:column: line. Reads the project's index as of its last rescan.",
    input_schema=_object({
        "query": _string("The text or regex to look for.", minLength=1, maxLength=1000),
        "regex": {"type": "boolean", "description": "Treat query as a regular expression (default false)."},
        "case": {"type": "boolean", "description": "Case-sensitive (default true)."},
        "glob": _string("Only paths matching this glob, e.g. 'src/**/*.py'.", maxLength=1000),
        "limit": {"type": "integer", "minimum": 1, "maximum": SEARCH_MAX_LIMIT,
                  "description": f"Most matches to return (default {SEARCH_DEFAULT_LIMIT})."}}, ["query"]),
    mutates=False, handler=search_run))

_register(Tool(
    name="symbols",
    description="Find definitions (functions, classes, methods, variables…) by name in the project's symbol index.",
    input_schema=_object({
        "name": _string("The symbol name, or the start or part of it (see mode).", minLength=1, maxLength=255),
        "mode": {"type": "string", "enum": ["exact", "prefix", "substring"],
                 "description": "How name matches (default prefix)."},
        "kind": _string("Only this kind, e.g. function, class, method.", maxLength=40)}, ["name"]),
    mutates=False, handler=symbols_run))

_register(Tool(
    name="write_file",
    description="Create a file, or replace a file's whole content, with text. Missing folders are created. For a "
                "change to part of an existing file prefer edit_file.",
    input_schema=_object({"path": _string(PATH_HELP, minLength=1, maxLength=4096),
                          "content": _string("The complete new content of the file (UTF-8 text).")},
                         ["path", "content"]),
    mutates=True, handler=write_file_run))

_register(Tool(
    name="edit_file",
    description="Replace an exact block of text in an existing file. `search` must match the file exactly, "
                "whitespace and line breaks included, and only once (include a few surrounding lines to make it "
                "unique), unless `count` says how many occurrences there are to replace them all.",
    input_schema=_object({"path": _string(PATH_HELP, minLength=1, maxLength=4096),
                          "search": _string("The exact text to find.", minLength=1),
                          "replace": _string("The text to put in its place."),
                          "count": {"type": "integer", "minimum": 1,
                                    "description": "The number of occurrences to replace, all of them."}},
                         ["path", "search", "replace"]),
    mutates=True, handler=edit_file_run))

_register(Tool(
    name="run_command",
    description="Run a shell command (bash -c) in the project folder and return its output and exit code. It runs "
                "non-interactively with a time limit; no secrets are in its environment.",
    input_schema=_object({
        "command": _string("The command line.", minLength=1, maxLength=shell_services.COMMAND_MAX_CHARS),
        "cwd": _string("The folder to run in, relative to the project root (default the root).", maxLength=4096),
        "timeout_s": {"type": "integer", "minimum": 1, "maximum": settings.KF_SHELL_MAX_TIMEOUT_SECONDS,
                      "description": f"Time limit in seconds (default {settings.KF_SHELL_TIMEOUT_SECONDS})."}},
        ["command"]),
    mutates=True, handler=run_command_run, keep_tail=True))

_register(Tool(
    name="run_tests",
    description="Run the project's tests with its test runner (detected: pytest, npm, go, cargo or make) and return "
                "the output, the counts and the failures with their file and line.",
    input_schema=_object({
        "args": {"type": "array", "items": {"type": "string", "maxLength": 4096}, "maxItems": 100,
                 "description": "Extra arguments for the runner, e.g. a test file or ['-k', 'name']."},
        "runner": {"type": "string", "enum": list(testrunners.RUNNERS),
                   "description": "The runner to use when detection picks the wrong one."},
        "cwd": _string("The folder to run in, relative to the project root (default the root).", maxLength=4096),
        "timeout_s": {"type": "integer", "minimum": 1, "maximum": settings.KF_SHELL_MAX_TIMEOUT_SECONDS,
                      "description": f"Time limit in seconds (default {settings.KF_SHELL_TIMEOUT_SECONDS})."}}, []),
    mutates=True, handler=run_tests_run, keep_tail=True))

_register(Tool(
    name="report_finding",
    description="Report a problem you found in the project's code (a bug, a vulnerability, a smell) at a file and "
                "line, for the user to review. Changes nothing.",
    input_schema=_object({
        "path": _string(PATH_HELP, minLength=1, maxLength=1024),
        "line": {"type": "integer", "minimum": 1},
        "rule": _string("A short rule id, e.g. sql-injection or unused-import.", minLength=1, maxLength=60),
        "severity": {"type": "string", "enum": [s.value for s in Finding.Severity]},
        "message": _string("What is wrong and why.", minLength=1, maxLength=500)},
        ["path", "line", "rule", "severity", "message"]),
    mutates=False, handler=report_finding_run))
