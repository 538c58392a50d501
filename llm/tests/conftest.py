"""Fixtures of the llm tests (the `llm_server` fixture itself is in the root conftest.py)."""

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def quick_retries(settings: Any) -> None:
    """Backoff waits of milliseconds, so retry tests take no time; a test about waits sets its own."""
    settings.KF_LLM_RETRY_BASE_SECONDS = 0.001
    settings.KF_LLM_RETRY_MAX_WAIT_SECONDS = 0.05
