"""Fixtures of the vault's tests: an operator (staff) account, a team admin, and a private key folder
for tests that rotate or inspect the key file (so parallel tests never share one)."""

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from accounts.models import Role, User, Workspace
from conftest import make_user


@pytest.fixture
def keys_dir(settings: Any, tmp_path: Path) -> Path:
    """A fresh KF_DATA_DIR for the key file (KF_MASTER_KEY unset), in this process and in any
    subprocess given `KF_DATA_DIR=<it>`."""
    folder = tmp_path / "kf-data"
    folder.mkdir()
    settings.KF_DATA_DIR = folder
    settings.KF_MASTER_KEY = ""
    return folder


@pytest.fixture
def operator(db: None) -> User:
    user = make_user("olga@example.com", name="Olga")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    return user


@pytest.fixture
def team_admin(team: Workspace) -> User:
    user = make_user("ada@example.com", name="Ada")
    team.memberships.create(user=user, role=Role.ADMIN)
    return user


def random_key_b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()
