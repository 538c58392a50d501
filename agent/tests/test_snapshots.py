"""Snapshots and rollback on real git repositories and folders in tmp dirs (no mocks)."""

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.snapshots import (
    DIFF_MAX_CHARS,
    REF_PREFIX,
    after_ref_name,
    snapshot_diff,
    snapshot_file_hashes,
    snapshot_ref_tree,
    snapshot_restore,
    snapshot_take,
    snapshot_tree_id,
)
from api.errors import Conflict, InvalidRequest, NotFound

PROJECT = "prj_test1"
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "Alice",
           "GIT_AUTHOR_EMAIL": "alice@example.com", "GIT_COMMITTER_NAME": "Alice",
           "GIT_COMMITTER_EMAIL": "alice@example.com"}


def git(cwd: Path, *args: str, check: bool = True) -> str:
    """The test's own git, as a user would run it (hooks enabled)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, **GIT_ENV}
    result = subprocess.run(["git", "-c", "protocol.file.allow=always", *args], cwd=cwd, env=env,
                            capture_output=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"git {args} failed: {result.stderr.decode()}")
    return result.stdout.decode("utf-8", "surrogateescape")


def write(path: Path, content: bytes | str, *, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if mode is not None:
        path.chmod(mode)


def files_of(root: Path) -> dict[str, Any]:
    """Every file under root (not .git) → ("link", target) or (executable?, bytes)."""
    state: dict[str, Any] = {}
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder) / name
            rel = (rel_folder / name).as_posix()
            if path.is_symlink():
                state[rel] = ("link", os.readlink(path))
            else:
                state[rel] = (bool(path.stat().st_mode & stat.S_IXUSR), path.read_bytes())
    return state


def user_state(repo: Path) -> dict[str, Any]:
    """What the user sees of their repository, read without git writing anything first."""
    git_dir = repo / ".git"
    index = (git_dir / "index").read_bytes() if (git_dir / "index").exists() else None
    refs = [line for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not line.startswith(REF_PREFIX)]
    return {"index": index, "head_file": (git_dir / "HEAD").read_bytes(), "refs": refs,
            "stash": git(repo, "stash", "list"), "status": git(repo, "--no-optional-locks",  # no index refresh
                                                             "status", "--porcelain=v1", "-z", "--untracked-files=all")}


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Path) -> Path:
    settings.KF_DATA_DIR = tmp_path / "data"
    settings.KF_DATA_DIR.mkdir()
    return settings.KF_DATA_DIR


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root / ".gitignore", "build/\n*.log\n")
    write(root / "mod.txt", "line one\nline two\n")
    write(root / "del.txt", "to be deleted\n")
    write(root / "ren_old.txt", "".join(f"renamed line {i}\n" for i in range(40)))
    write(root / "bin.dat", bytes(range(256)) * 8)
    write(root / "script.sh", "#!/bin/sh\necho hi\n", mode=0o644)
    write(root / "exe.sh", "#!/bin/sh\necho exe\n", mode=0o755)
    write(root / "dir" / "nested.txt", "nested\n")
    os.symlink("mod.txt", root / "link")
    os.symlink("exe.sh", root / "becomes_file")
    write(root / "becomes_link", "a regular file\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    write(root / "build" / "out.o", b"\x7fELF ignored build output")
    write(root / "app.log", "ignored log\n")
    return root


def simulate_run(root: Path) -> None:
    """What an agent run might do: every kind of change, including to ignored files."""
    write(root / "mod.txt", "line one\nline 2 changed\n")
    (root / "del.txt").unlink()
    (root / "ren_old.txt").rename(root / "ren_new.txt")
    write(root / "bin.dat", bytes(reversed(range(256))) * 8 + b"\0\0")
    (root / "script.sh").chmod(0o755)
    (root / "exe.sh").chmod(0o644)
    (root / "link").unlink()
    os.symlink("exe.sh", root / "link")
    (root / "becomes_file").unlink()
    write(root / "becomes_file", "now a file\n")
    (root / "becomes_link").unlink()
    os.symlink("mod.txt", root / "becomes_link")
    write(root / "new.txt", "added\n")
    write(root / "newdir" / "deep" / "x.txt", "added deep\n")
    shutil.rmtree(root / "dir")
    write(root / "dir", "a file where a folder was\n")
    write(root / "build" / "out.o", b"rebuilt, still ignored")
    write(root / "build" / "new.o", b"new ignored")
    write(root / "app.log", "ignored log, changed\n")


def test_snapshot_take_leaves_user_index_branch_stash_and_untracked_files_alone(repo: Path) -> None:
    write(repo / "stashed.txt", "stash me\n")
    git(repo, "add", "stashed.txt")
    git(repo, "stash", "-q")
    write(repo / "mod.txt", "staged version\n")
    git(repo, "add", "mod.txt")
    write(repo / "mod.txt", "worktree version\n")  # differs from what is staged
    write(repo / "untracked.txt", "untracked\n")
    before_files = files_of(repo)
    before = user_state(repo)

    commit = snapshot_take(root=repo, project_id=PROJECT, ref_name="run_a")

    assert user_state(repo) == before
    assert files_of(repo) == before_files
    assert git(repo, "rev-parse", f"{REF_PREFIX}run_a").strip() == commit
    assert git(repo, "rev-parse", f"{commit}^").strip() == git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn", commit).strip() == "kf <kf@localhost>|kf"
    # The commit holds the work tree as it is on disk (not the staged version), untracked files
    # included, ignored files not.
    assert git(repo, "show", f"{commit}:mod.txt") == "worktree version\n"
    assert git(repo, "show", f"{commit}:untracked.txt") == "untracked\n"
    listed = git(repo, "ls-tree", "-r", "--name-only", commit).split()
    assert "app.log" not in listed and "build/out.o" not in listed
    assert "stashed.txt" not in listed


def test_rollback_restores_every_kind_of_change_exactly(repo: Path) -> None:
    before_files = files_of(repo)
    before_state = user_state(repo)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_b")
    simulate_run(repo)
    snapshot_take(root=repo, project_id=PROJECT, ref_name=after_ref_name("run_b"))
    ignored_after_run = {k: v for k, v in files_of(repo).items() if k.startswith("build/") or k.endswith(".log")}

    changed = snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_b",
                               expected_tree=snapshot_ref_tree(root=repo, project_id=PROJECT,
                                                               ref_name=after_ref_name("run_b")),
                               force=False)

    after = files_of(repo)
    tracked_before = {k: v for k, v in before_files.items() if not (k.startswith("build/") or k.endswith(".log"))}
    assert {k: v for k, v in after.items() if k not in ignored_after_run} == tracked_before
    # Ignored files keep whatever the run left there: rollback neither restores nor removes them.
    assert {k: after[k] for k in ignored_after_run} == ignored_after_run
    assert after["link"] == ("link", "mod.txt") and after["becomes_link"] == (False, b"a regular file\n")
    assert after["becomes_file"] == ("link", "exe.sh")
    assert after["script.sh"][0] is False and after["exe.sh"][0] is True
    assert after["bin.dat"] == (False, bytes(range(256)) * 8)
    assert not (repo / "newdir").exists()  # the emptied folders of added files go too
    assert set(changed) == {"mod.txt", "del.txt", "ren_old.txt", "ren_new.txt", "bin.dat", "script.sh", "exe.sh",
                            "link", "becomes_file", "becomes_link", "new.txt", "newdir/deep/x.txt", "dir",
                            "dir/nested.txt"}
    assert user_state(repo) == before_state
    # Restoring again changes nothing.
    assert snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_b", expected_tree=None, force=False) == []


def test_snapshot_diff_lists_changes_with_unified_diffs(repo: Path) -> None:
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_c")
    simulate_run(repo)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_c-after")

    items = {item["path"]: item for item in snapshot_diff(root=repo, project_id=PROJECT, from_ref="run_c",
                                                         to_ref="run_c-after")}

    assert items["mod.txt"]["status"] == "modified"
    assert "-line two\n+line 2 changed\n" in items["mod.txt"]["diff"]
    assert items["mod.txt"]["diff"].startswith("diff --git a/mod.txt b/mod.txt\n")
    assert items["del.txt"]["status"] == "deleted" and "-to be deleted" in items["del.txt"]["diff"]
    assert items["new.txt"]["status"] == "added" and "+added" in items["new.txt"]["diff"]
    assert items["ren_new.txt"]["status"] == "renamed" and items["ren_new.txt"]["old_path"] == "ren_old.txt"
    assert "ren_old.txt" not in items
    assert "Binary files" in items["bin.dat"]["diff"]
    assert items["script.sh"]["status"] == "modified" and "new mode 100755" in items["script.sh"]["diff"]
    # A file turned into a symlink: one entry, whose diff holds both halves.
    assert items["becomes_link"]["status"] == "modified"
    assert "deleted file mode 100644" in items["becomes_link"]["diff"]
    assert "new file mode 120000" in items["becomes_link"]["diff"]
    assert items["newdir/deep/x.txt"]["status"] == "added"
    assert not any(path.startswith("build/") or path.endswith(".log") for path in items)
    assert all(item["truncated"] is False for item in items.values())


def test_file_hashes_are_plain_sha256_of_each_side(repo: Path) -> None:
    import hashlib

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    before = {name: (repo / name).read_bytes() for name in ("mod.txt", "del.txt", "bin.dat", "ren_old.txt")}
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_h")
    simulate_run(repo)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_h-after")

    items = {f["path"]: f for f in snapshot_file_hashes(root=repo, project_id=PROJECT, from_ref="run_h",
                                                        to_ref="run_h-after")}
    assert items["mod.txt"] == {"path": "mod.txt", "before_sha256": sha(before["mod.txt"]),
                                "after_sha256": sha(b"line one\nline 2 changed\n")}
    assert items["del.txt"]["after_sha256"] is None and items["del.txt"]["before_sha256"] == sha(before["del.txt"])
    assert items["new.txt"] == {"path": "new.txt", "before_sha256": None, "after_sha256": sha(b"added\n")}
    assert items["bin.dat"]["after_sha256"] == sha((repo / "bin.dat").read_bytes())
    # A rename is a deletion and an addition of the same content.
    assert items["ren_old.txt"]["before_sha256"] == items["ren_new.txt"]["after_sha256"] == sha(before["ren_old.txt"])
    assert items["script.sh"]["before_sha256"] == items["script.sh"]["after_sha256"]  # a mode change only
    assert list(items) == sorted(items) and not any(p.startswith("build/") for p in items)


def test_large_files_get_capped_diffs_and_come_back_byte_identical(repo: Path) -> None:
    write(repo / "huge.txt", "".join(f"original line {i}\n" for i in range(20000)))
    large = os.urandom(5 * 1024 * 1024)
    write(repo / "large.bin", large)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_d")
    write(repo / "huge.txt", "".join(f"rewritten line {i}\n" for i in range(20000)))
    write(repo / "big.bin", os.urandom(3 * 1024 * 1024))
    write(repo / "large.bin", large[:1000] + b"changed" + large[2000:])
    write(repo / "big.txt", "a text file too big for a text diff\n" * 60000)  # > DIFF_BIG_FILE_BYTES
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_d-after")

    items = {i["path"]: i for i in snapshot_diff(root=repo, project_id=PROJECT, from_ref="run_d",
                                                 to_ref="run_d-after")}

    assert items["huge.txt"]["truncated"] is True
    assert len(items["huge.txt"]["diff"]) < DIFF_MAX_CHARS + 200
    assert items["huge.txt"]["diff"].rstrip().endswith(f"diff truncated at {DIFF_MAX_CHARS} characters")
    assert items["big.bin"]["status"] == "added" and "Binary files" in items["big.bin"]["diff"]
    assert len(items["big.bin"]["diff"]) < 1000
    assert "Binary files /dev/null and b/big.txt differ" in items["big.txt"]["diff"]
    # Large files come back byte-identical; those the run added are removed.
    snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_d", expected_tree=None, force=False)
    assert not (repo / "big.bin").exists() and not (repo / "big.txt").exists()
    assert (repo / "large.bin").read_bytes() == large
    assert (repo / "huge.txt").read_text().startswith("original line 0\n")


def test_rollback_conflicts_when_files_changed_after_the_run_unless_forced(repo: Path) -> None:
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_e")
    write(repo / "mod.txt", "changed by the run\n")
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_e-after")
    expected = snapshot_ref_tree(root=repo, project_id=PROJECT, ref_name="run_e-after")
    assert snapshot_tree_id(root=repo, project_id=PROJECT) == expected
    write(repo / "mod.txt", "edited by the user after the run\n")
    write(repo / "later.txt", "created after the run\n")
    assert snapshot_tree_id(root=repo, project_id=PROJECT) != expected

    with pytest.raises(Conflict) as caught:
        snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_e", expected_tree=expected, force=False)

    assert caught.value.status_code == 409 and caught.value.default_code == "conflict"
    assert caught.value.details == {"paths": ["later.txt", "mod.txt"]}
    assert "later.txt" in caught.value.message and "mod.txt" in caught.value.message
    assert (repo / "mod.txt").read_text() == "edited by the user after the run\n"  # nothing touched
    assert (repo / "later.txt").exists()

    changed = snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_e", expected_tree=expected, force=True)

    assert changed == ["later.txt", "mod.txt"]
    assert (repo / "mod.txt").read_text() == "line one\nline two\n"
    assert not (repo / "later.txt").exists()


def test_hooks_of_the_repository_never_run(repo: Path, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    hooks = repo / ".git" / "hooks"
    for name in ("pre-commit", "post-commit", "reference-transaction", "post-index-change", "post-checkout",
                 "pre-auto-gc", "fsmonitor-watchman"):
        write(hooks / name, f"#!/bin/sh\ntouch '{markers}/{name}'\n", mode=0o755)
    # The hooks are live for the user's own git: the test would see them fire.
    git(repo, "update-ref", "refs/heads/probe", "HEAD")
    assert (markers / "reference-transaction").exists()
    (markers / "reference-transaction").unlink()

    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_f")
    simulate_run(repo)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_f-after")
    snapshot_diff(root=repo, project_id=PROJECT, from_ref="run_f", to_ref="run_f-after")
    snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_f", expected_tree=None, force=False)

    assert list(markers.iterdir()) == []


def test_empty_repository_without_head(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    git(root, "init", "-q")
    write(root / "a.txt", "first\n")
    write(root / "b" / "c.txt", "second\n")
    before = user_state(root)

    commit = snapshot_take(root=root, project_id=PROJECT, ref_name="run_g")

    assert git(root, "rev-list", "--parents", "-1", commit).split() == [commit]  # no parent
    assert git(root, "rev-parse", "--verify", "-q", "HEAD", check=False) == ""  # still unborn
    assert user_state(root) == before
    write(root / "a.txt", "changed\n")
    write(root / "new.txt", "new\n")
    (root / "b" / "c.txt").unlink()

    changed = snapshot_restore(root=root, project_id=PROJECT, ref_name="run_g", expected_tree=None, force=False)

    assert changed == ["a.txt", "b/c.txt", "new.txt"]
    assert files_of(root) == {"a.txt": (False, b"first\n"), "b/c.txt": (False, b"second\n")}
    assert user_state(root) == before


def test_non_git_folder_uses_a_shadow_repository_under_the_data_dir(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "plain"
    write(root / ".gitignore", "secret.env\nnode_modules/\n")
    write(root / "main.py", "print('hello')\n")
    write(root / "tool", "#!/bin/sh\n", mode=0o755)
    write(root / "secret.env", "TOKEN=abc\n")
    write(root / "node_modules" / "dep.js", "ignored\n")
    os.symlink("main.py", root / "alias.py")
    before = files_of(root)

    snapshot_take(root=root, project_id=PROJECT, ref_name="run_h")

    assert not (root / ".git").exists()
    shadow = data_dir / "shadow" / f"{PROJECT}.git"
    assert (shadow / "HEAD").is_file()
    listed = git(root, f"--git-dir={shadow}", "ls-tree", "-r", "--name-only", f"{REF_PREFIX}run_h").split()
    assert sorted(listed) == [".gitignore", "alias.py", "main.py", "tool"]

    write(root / "main.py", "print('changed')\n")
    write(root / "added.py", "x = 1\n")
    (root / "tool").chmod(0o644)
    (root / "alias.py").unlink()
    write(root / "secret.env", "TOKEN=changed\n")
    snapshot_take(root=root, project_id=PROJECT, ref_name="run_h-after")
    changed = snapshot_restore(root=root, project_id=PROJECT, ref_name="run_h",
                               expected_tree=snapshot_ref_tree(root=root, project_id=PROJECT, ref_name="run_h-after"),
                               force=False)

    assert changed == ["added.py", "alias.py", "main.py", "tool"]
    after = files_of(root)
    assert after == {**before, "secret.env": (False, b"TOKEN=changed\n")}
    assert not (root / ".git").exists()


def test_project_in_an_ignored_folder_of_an_enclosing_repository_uses_the_shadow(tmp_path: Path,
                                                                                 data_dir: Path) -> None:
    outer = tmp_path / "outer"
    write(outer / ".gitignore", "var/\n")
    write(outer / "readme", "outer\n")
    git(outer, "init", "-q")
    git(outer, "add", "-A")
    git(outer, "commit", "-q", "-m", "outer")
    root = outer / "var" / "projects" / "p"
    write(root / "f.txt", "inside an ignored folder\n")

    snapshot_take(root=root, project_id=PROJECT, ref_name="run_i")
    write(root / "f.txt", "changed\n")
    snapshot_restore(root=root, project_id=PROJECT, ref_name="run_i", expected_tree=None, force=False)

    assert (root / "f.txt").read_text() == "inside an ignored folder\n"
    assert (data_dir / "shadow" / f"{PROJECT}.git").is_dir()
    assert git(outer, "for-each-ref", REF_PREFIX) == ""


def test_subfolder_project_snapshots_and_restores_only_its_subtree(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    write(top / ".gitignore", "*.tmp\n")
    write(top / "other" / "o.txt", "other\n")
    write(top / "svc" / "app.py", "app\n")
    write(top / "svc" / "lib" / "util.py", "util\n")
    git(top, "init", "-q")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "mono")
    root = top / "svc"
    before = user_state(top)

    commit = snapshot_take(root=root, project_id=PROJECT, ref_name="run_j")
    write(root / "app.py", "app changed\n")
    write(root / "lib" / "new.py", "new\n")
    write(root / "cache.tmp", "ignored\n")
    write(top / "other" / "o.txt", "other changed meanwhile\n")
    write(top / "other" / "new.txt", "other new\n")
    snapshot_take(root=root, project_id=PROJECT, ref_name="run_j-after")

    # The snapshot is HEAD with only the project's subtree from disk.
    assert git(top, "show", f"{commit}:svc/app.py") == "app\n"
    diff = snapshot_diff(root=root, project_id=PROJECT, from_ref="run_j", to_ref="run_j-after")
    assert sorted((d["path"], d["status"]) for d in diff) == [("app.py", "modified"), ("lib/new.py", "added")]
    assert "--- a/app.py" in next(d["diff"] for d in diff if d["path"] == "app.py")

    # Changes outside the project do not count as a conflict, and are not rolled back.
    expected = snapshot_ref_tree(root=root, project_id=PROJECT, ref_name="run_j-after")
    changed = snapshot_restore(root=root, project_id=PROJECT, ref_name="run_j", expected_tree=expected, force=False)

    assert changed == ["app.py", "lib/new.py"]
    assert (root / "app.py").read_text() == "app\n" and not (root / "lib" / "new.py").exists()
    assert (root / "cache.tmp").exists()
    assert (top / "other" / "o.txt").read_text() == "other changed meanwhile\n"
    assert (top / "other" / "new.txt").exists()
    assert user_state(top)["index"] == before["index"]


def test_paths_with_spaces_newlines_and_unicode(repo: Path) -> None:
    odd = ["with space.txt", "new\nline.txt", "ünïcødé/文件.txt", "tab\there.txt", '"quoted" *glob?.txt']
    for name in odd:
        write(repo / name, f"original {name}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "odd names")
    before = files_of(repo)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_k")
    for name in odd:
        write(repo / name, f"changed {name}\n")
    (repo / odd[0]).unlink()
    write(repo / "added\nnewline ü.txt", "added\n")
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_k-after")

    diff = {d["path"]: d for d in snapshot_diff(root=repo, project_id=PROJECT, from_ref="run_k",
                                                to_ref="run_k-after")}
    changed = snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_k", expected_tree=None, force=False)

    assert set(diff) == set(odd) | {"added\nnewline ü.txt"}
    assert diff["with space.txt"]["status"] == "deleted"
    assert set(changed) == set(odd) | {"added\nnewline ü.txt"}
    assert files_of(repo) == before


def test_submodules_are_left_alone(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "lib.txt", "lib\n")
    git(lib, "init", "-q")
    git(lib, "add", "-A")
    git(lib, "commit", "-q", "-m", "lib")
    root = tmp_path / "main"
    write(root / "main.txt", "main\n")
    git(root, "init", "-q")
    git(root, "submodule", "add", "-q", str(lib), "vendor/lib")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "with submodule")

    snapshot_take(root=root, project_id=PROJECT, ref_name="run_l")
    write(root / "vendor" / "lib" / "lib.txt", "edited inside the submodule\n")
    write(root / "vendor" / "lib" / "extra.txt", "new inside the submodule\n")
    write(root / "main.txt", "main changed\n")
    changed = snapshot_restore(root=root, project_id=PROJECT, ref_name="run_l", expected_tree=None, force=False)

    assert changed == ["main.txt"]
    assert (root / "main.txt").read_text() == "main\n"
    assert (root / "vendor" / "lib" / "lib.txt").read_text() == "edited inside the submodule\n"
    assert (root / "vendor" / "lib" / "extra.txt").exists()


def test_caller_git_environment_does_not_leak(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    git(decoy, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(decoy / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(decoy))
    monkeypatch.setenv("GIT_INDEX_FILE", str(repo / ".git" / "index"))
    before = (repo / ".git" / "index").read_bytes()

    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_m")

    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert (repo / ".git" / "index").read_bytes() == before
    assert git(repo, "rev-parse", "--verify", "-q", f"{REF_PREFIX}run_m").strip()
    assert git(decoy, "for-each-ref") == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the repository to another uid")
def test_repository_owned_by_another_user(repo: Path, data_dir: Path) -> None:
    for folder, dirs, names in os.walk(repo):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + names)]:
            os.lchown(name, 65534, 65534)
    assert "dubious ownership" in subprocess.run(
        ["git", "status"], cwd=repo, capture_output=True, text=True, check=False,
        env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}).stderr

    commit = snapshot_take(root=repo, project_id=PROJECT, ref_name="run_n")
    assert git(repo, "-c", f"safe.directory={repo}", "rev-parse", f"{REF_PREFIX}run_n").strip() == commit
    assert not (data_dir / "shadow").exists()  # the repository itself, not a shadow
    write(repo / "mod.txt", "changed\n")
    assert snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_n", expected_tree=None,
                            force=False) == ["mod.txt"]
    assert (repo / "mod.txt").read_text() == "line one\nline two\n"


def test_bad_input_is_refused_with_api_errors(repo: Path, tmp_path: Path) -> None:
    for name in ("../x", "-x", "a/b", "", "x" * 201, "a..b", "ref\n"):
        with pytest.raises(InvalidRequest):
            snapshot_take(root=repo, project_id=PROJECT, ref_name=name)
    with pytest.raises(InvalidRequest):
        snapshot_take(root=repo, project_id="../../etc", ref_name="run_o")
    with pytest.raises(InvalidRequest):
        snapshot_take(root=tmp_path / "missing", project_id=PROJECT, ref_name="run_o")
    with pytest.raises(NotFound):
        snapshot_restore(root=repo, project_id=PROJECT, ref_name="never_taken", expected_tree=None, force=False)
    snapshot_take(root=repo, project_id=PROJECT, ref_name="run_o")
    for tree in ("--output=/tmp/x", "HEAD", "0" * 39):
        with pytest.raises(InvalidRequest):
            snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_o", expected_tree=tree, force=False)
    with pytest.raises(InvalidRequest):
        snapshot_restore(root=repo, project_id=PROJECT, ref_name="run_o", expected_tree="1" * 40, force=False)


def test_non_git_folder_holding_the_data_dir_is_refused(tmp_path: Path, settings: Any) -> None:
    root = tmp_path / "holder"
    settings.KF_DATA_DIR = root / "var"
    settings.KF_DATA_DIR.mkdir(parents=True)
    write(root / "a.txt", "a\n")
    with pytest.raises(InvalidRequest):
        snapshot_take(root=root, project_id=PROJECT, ref_name="run_p")
    assert not (root / ".git").exists()
