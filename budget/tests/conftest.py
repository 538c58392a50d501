"""Fixtures of the budget's tests: a team admin (Ada), and a project whose files look like a rescan's."""

import hashlib
from decimal import Decimal

import pytest

from accounts.models import Role, User, Workspace
from conftest import make_user
from projects.models import Blob, File, Project


@pytest.fixture
def team_admin(team: Workspace) -> User:
    user = make_user("ada@example.com", name="Ada")
    team.memberships.create(user=user, role=Role.ADMIN)
    return user


def personal(user: User) -> Workspace:
    return Workspace.objects.get(memberships__user=user, personal=True)


def usd(text: str) -> Decimal:
    return Decimal(text)


def project_with_files(workspace: Workspace, files: dict[str, tuple[str, str]], *, name: str = "app") -> Project:
    """A project whose last rescan found `files` (path → (language, content)), stored as a rescan stores
    them (a Blob per content, a File per path)."""
    project = Project.objects.create(workspace=workspace, name=name, root=f"/nonexistent/{name}",
                                     source=Project.Source.PATH)
    for path, (language, content) in files.items():
        sha = hashlib.sha256(content.encode()).hexdigest()
        blob, _ = Blob.objects.get_or_create(sha=sha, defaults={"size": len(content.encode()), "content": content})
        File.objects.create(project=project, path=path, blob=blob, size=blob.size, mtime_ns=0, language=language)
    return project
