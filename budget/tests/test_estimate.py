"""The estimate of a run: its shape, what moves it (task, steps, project size and language mix, the model's
price and context window), and its calibration against the workspace's past runs."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from budget.estimate import DEFAULT_CONTEXT_TOKENS, project_profile, run_estimate
from budget.models import PriceOverride, Reservation
from budget.services import caps_set, run_reserve
from budget.tests.conftest import personal, project_with_files, usd
from budget.tokens import count_message_tokens, count_tokens, counter_for

pytestmark = pytest.mark.django_db

TASK = "Fix the off-by-one error in the pagination of the search results."
PY = "def f(items, n):\n    return [item for item in items[:n] if item]\n"


def test_the_estimate_has_three_rising_scenarios(owner: User) -> None:
    e = run_estimate(workspace=personal(owner), user=owner, task=TASK, model="gpt-4o")
    assert e.model == "gpt-4o" and e.tokenizer == "o200k_base" and e.pricing_source == "genai-prices openai/gpt-4o"
    assert e.task_tokens == count_tokens(model="gpt-4o", text=TASK)
    user_message = count_message_tokens(model="gpt-4o", messages=[{"role": "user", "content": TASK}])
    assert e.first_prompt_tokens == DEFAULT_CONTEXT_TOKENS + user_message
    assert 0 < e.low.usd < e.expected.usd < e.high.usd
    assert e.low.steps <= e.expected.steps <= e.high.steps == 30
    assert e.low.input_tokens < e.expected.input_tokens < e.high.input_tokens
    # Every step re-sends at least the first prompt.
    assert e.expected.input_tokens >= e.expected.steps * e.first_prompt_tokens
    assert e.remaining_today_usd is None and e.calibrated_runs == 0 and e.context_window == 128_000
    assert all(isinstance(s.usd, Decimal) and s.usd == s.usd.quantize(Decimal("0.000001"))
               for s in (e.low, e.expected, e.high))


def test_a_longer_task_and_more_steps_cost_more(owner: User) -> None:
    ws = personal(owner)
    short = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o")
    long = run_estimate(workspace=ws, user=owner, task=TASK + PY * 500, model="gpt-4o")
    assert long.expected.usd > short.expected.usd and long.expected.input_tokens > short.expected.input_tokens
    few = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o", max_steps=3)
    assert few.high.steps == 3 and few.high.usd < short.high.usd and few.expected.steps <= 3


def test_the_context_window_bounds_each_call(owner: User) -> None:
    huge = "word " * 700_000  # ~700k tokens: more than gpt-4o's 128k window
    e = run_estimate(workspace=personal(owner), user=owner, task=huge, model="gpt-4o", max_steps=5)
    assert e.high.input_tokens <= 5 * 128_000
    assert e.notes and "context window" in e.notes[0]


def test_the_price_comes_from_the_workspace_then_the_list(owner: User) -> None:
    ws = personal(owner)
    unpriced = run_estimate(workspace=ws, user=owner, task=TASK, model="my-local-llama")
    assert unpriced.pricing_source == "unpriced" and unpriced.high.usd == 0 and unpriced.tokenizer == "ratio"
    PriceOverride.objects.create(workspace=ws, model="my-local-llama", input_usd_per_mtok=1, output_usd_per_mtok=2)
    priced = run_estimate(workspace=ws, user=owner, task=TASK, model="my-local-llama")
    assert priced.pricing_source == "override"
    expected = (Decimal(priced.expected.input_tokens) * 1 + Decimal(priced.expected.output_tokens) * 2) / 10**6
    assert priced.expected.usd == expected.quantize(Decimal("0.000001"), rounding="ROUND_CEILING")


def test_a_bigger_project_means_more_steps_and_bigger_reads(owner: User) -> None:
    ws = personal(owner)
    small = project_with_files(ws, {"app.py": ("Python", PY * 3)}, name="small")
    files = {f"pkg/mod{i}.py": ("Python", PY * 40) for i in range(400)}
    big = project_with_files(ws, files, name="big")
    without = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o")
    on_small = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o", project=small)
    on_big = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o", project=big)
    assert on_big.expected.steps > on_small.expected.steps
    assert on_big.expected.usd > on_small.expected.usd
    assert on_big.expected.growth > on_small.expected.growth
    assert without.project is None and on_big.project is not None and on_big.project.files == 400


def test_the_language_mix_sets_the_tokens_per_byte(owner: User) -> None:
    ws = personal(owner)
    counter = counter_for("gpt-4o")
    cjk = "def 関数():\n    return '日本語のテキストです。データを処理します。'\n" * 30
    project = project_with_files(ws, {"a.py": ("Python", PY * 30), "b.py": ("Python", PY * 30),
                                      "c.txt": ("Text", cjk), "d.txt": ("Text", cjk)}, name="mixed")
    profile = project_profile(project=project, counter=counter)
    assert profile.files == 4 and profile.bytes == 2 * len((PY * 30).encode()) + 2 * len(cjk.encode())
    assert {lang for lang, _ in profile.languages} == {"Python", "Text"}
    py_ratio = counter.count(PY * 30) / len((PY * 30).encode())
    cjk_ratio = counter.count(cjk) / len(cjk.encode())
    py_bytes, cjk_bytes = 2 * len((PY * 30).encode()), 2 * len(cjk.encode())
    assert profile.tokens_per_byte == pytest.approx((py_bytes * py_ratio + cjk_bytes * cjk_ratio) / profile.bytes)


def _past_run(ws: object, run_id: str, *, calls: int, first: int, growth: int, output_per_call: int) -> None:
    """A released reservation as a finished run leaves it: n calls whose prompts grew by `growth`."""
    Reservation.objects.create(
        run_id=run_id, workspace=ws, model="gpt-4o", status=Reservation.Status.RELEASED, day=timezone.now().date(),
        month=timezone.now().date().replace(day=1), calls=calls, first_input_tokens=first,
        input_tokens=sum(first + k * growth for k in range(calls)), output_tokens=calls * output_per_call,
        released_at=timezone.now())


def test_past_runs_calibrate_the_expected_figure(owner: User) -> None:
    ws = personal(owner)
    before = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o")
    for i in range(6):  # long, heavy runs: 20 calls, prompts growing by 6,000 tokens a call
        _past_run(ws, f"run_heavy_{i}", calls=20, first=2000, growth=6000, output_per_call=900)
    heavy = run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o")
    assert heavy.calibrated_runs == 6
    assert heavy.expected.steps > before.expected.steps
    assert heavy.expected.growth > before.expected.growth
    assert heavy.expected.usd > 3 * before.expected.usd
    assert heavy.high.growth >= 6000 and heavy.high.output_per_step >= 900  # the largest seen


def test_short_past_runs_bring_the_expected_figure_down(owner: User, team: object) -> None:
    before = run_estimate(workspace=team, user=owner, task=TASK, model="gpt-4o")
    for i in range(9):
        _past_run(team, f"run_light_{i}", calls=2, first=1800, growth=100, output_per_call=50)
    light = run_estimate(workspace=team, user=owner, task=TASK, model="gpt-4o")
    assert light.calibrated_runs == 9
    assert light.expected.steps < before.expected.steps and light.expected.usd < before.expected.usd
    # Another workspace's history does not move this one's figure.
    assert run_estimate(workspace=personal(owner), user=owner, task=TASK, model="gpt-4o").expected.usd == before.expected.usd


def test_open_reservations_do_not_calibrate(owner: User) -> None:
    ws = personal(owner)
    run_reserve(workspace=ws, user=owner, run_id="run_open", model="gpt-4o", usd=usd("1"))
    assert run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o").calibrated_runs == 0


def test_remaining_today_is_what_the_caps_leave(owner: User) -> None:
    ws = personal(owner)
    caps_set(actor=owner, workspace=ws, daily_usd=usd("2"))
    run_reserve(workspace=ws, user=owner, run_id="run_a", model="gpt-4o", usd=usd("0.75"))
    assert run_estimate(workspace=ws, user=owner, task=TASK, model="gpt-4o").remaining_today_usd == usd("1.25")


def test_the_profile_is_cached_until_the_next_rescan(owner: User) -> None:
    ws = personal(owner)
    project = project_with_files(ws, {"a.py": ("Python", PY * 30)})
    counter = counter_for("gpt-4o")
    first = project_profile(project=project, counter=counter)
    with CaptureQueriesContext(connection) as queries:
        assert project_profile(project=project, counter=counter) == first
    assert len(queries) == 0
    project.indexed_at = timezone.now()  # what the next rescan does
    with CaptureQueriesContext(connection) as queries:
        assert project_profile(project=project, counter=counter) == first
    assert len(queries) > 0


def test_the_next_calls_bound_is_its_prompt_and_an_answer_allowance(owner: User) -> None:
    from budget.estimate import CALL_OUTPUT_ALLOWANCE, call_estimate_usd
    from budget.pricing import price_usd

    ws = personal(owner)
    messages = [{"role": "system", "content": "You are kf's coding agent."}, {"role": "user", "content": TASK}]
    tool = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}
    prompt = count_message_tokens(model="gpt-4o", messages=messages, tools=[tool])
    expected = price_usd(model="gpt-4o", input_tokens=prompt, output_tokens=CALL_OUTPUT_ALLOWANCE).usd
    assert call_estimate_usd(workspace=ws, model="gpt-4o", messages=messages, tools=[tool]) == expected
    assert call_estimate_usd(workspace=ws, model="my-local-llama", messages=messages) == 0
