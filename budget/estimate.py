"""What an agent run will cost, before it starts.

An agent run is a loop of model calls, each sending the whole conversation so far: the system prompt
and tool schemas (the context), the task, then every earlier step's assistant turn and tool results.
With a first prompt of B tokens that grows by G tokens a step, n steps send
    input  = Σ_{k<n} min(B + k·G, context window)        output = n · out
tokens. B is counted exactly (the task, with the model's tokenizer). n, G and out are guessed from
the project (files of the last rescan: how many, their typical size, and their tokens per byte by
language, from a sample of their contents counted with the model's tokenizer), then calibrated with
the workspace's past runs: each released reservation knows its calls (n), its total input and output
tokens and its first call's prompt (B), so G = 2·(input − n·B) / (n·(n−1)). The guess counts as
PRIOR_WEIGHT runs against the history's medians.

Three scenarios: low (a third of the expected steps, half the growth and output), expected, and high
(every allowed step, twice the growth and output, or the largest seen): the high figure is what the
agent reserves against the caps.
"""

import math
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db.models import Sum

from accounts.models import User, Workspace
from budget.models import Reservation
from budget.pricing import Rate, context_window, rate_for, round_up
from budget.selectors import standing
from budget.tokens import TokenCounter, count_message_tokens, counter_for
from projects.models import File, Project

DEFAULT_MAX_STEPS = 30
# The agent's system prompt and its 9 tool schemas: 1,581 o200k tokens when measured (agent/loop.py's
# SYSTEM_PROMPT, agent/tools.py's openai_tools()); the agent passes the exact count for its own estimates.
DEFAULT_CONTEXT_TOKENS = 1600
OUTPUT_PER_STEP = 300  # a tool call's arguments or a short answer
SEARCH_RESULT_TOKENS = 300  # a listing, a search, a command's short output
FILE_READ_SHARE = 0.6  # of the steps read (part of) a file; the rest list, search or run something
NO_PROJECT_RESULT_TOKENS = 1200
TOOL_RESULT_MAX_CHARS = 30_000  # the agent gives the model at most this much of one tool result
MESSAGE_WRAPPING = 10  # the assistant and tool messages a step adds, around their content
PRIOR_WEIGHT = 3
HISTORY_RUNS = 50
PRICE_GROUPS = 12  # steps are priced in at most this many groups (genai-prices takes ~0.2 ms a call)
SAMPLE_LANGUAGES = 4
SAMPLE_FILES_PER_LANGUAGE = 3
SAMPLE_MAX_FILE_BYTES = 64 * 1024
PROFILE_CACHE_SECONDS = 3600
# A call's answer is bounded by what the model may write; the agent sets no max_tokens, so the hold for
# one call assumes this much (a longer answer is still paid, and shows as the reservation's overshoot).
CALL_OUTPUT_ALLOWANCE = 4096


@dataclass(frozen=True)
class ProjectProfile:
    files: int
    bytes: int
    median_file_bytes: int
    tokens_per_byte: float
    languages: list[tuple[str, int]]  # (language, bytes), largest first


@dataclass(frozen=True)
class Scenario:
    steps: int
    growth: float  # tokens the conversation grows by per step
    output_per_step: float
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal = Decimal(0)


@dataclass(frozen=True)
class Estimate:
    model: str
    tokenizer: str  # the encoding that counted the task, or "ratio"
    task_tokens: int
    first_prompt_tokens: int
    low: Scenario
    expected: Scenario
    high: Scenario
    pricing_source: str
    remaining_today_usd: Decimal | None
    calibrated_runs: int
    context_window: int | None
    project: ProjectProfile | None = None
    notes: list[str] = field(default_factory=list)


def _language_ratios(project: Project, counter: TokenCounter, languages: list[tuple[str, int]]) -> dict[str, float]:
    """Tokens per byte of the project's largest languages, from a few of their files' contents."""
    ratios: dict[str, float] = {}
    for language, _ in languages[:SAMPLE_LANGUAGES]:
        sample = (File.objects.filter(project=project, language=language, size__gte=256,
                                      size__lte=SAMPLE_MAX_FILE_BYTES)
                  .order_by("id").values_list("size", "blob__content")[:SAMPLE_FILES_PER_LANGUAGE])
        size = sum(s for s, _ in sample)
        if size:
            ratios[language] = sum(counter.count(content) for _, content in sample) / size
    return ratios


def project_profile(*, project: Project, counter: TokenCounter) -> ProjectProfile:
    """The project's size and language mix as of its last rescan (cached until the next one)."""
    indexed = project.indexed_at.timestamp() if project.indexed_at else 0
    key = f"budget:profile:{project.pk}:{indexed}:{counter.name}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    files = File.objects.filter(project=project)
    by_language = sorted(((row["language"] or "", row["total"]) for row in
                          files.values("language").annotate(total=Sum("size")).order_by()),
                         key=lambda item: -item[1])
    count = files.count()
    total = sum(size for _, size in by_language)
    median = files.order_by("size").values_list("size", flat=True)[count // 2] if count else 0
    ratios = _language_ratios(project, counter, by_language)
    fallback = (sum(ratios.values()) / len(ratios)) if ratios else 1 / 3.6
    tokens_per_byte = (sum(size * ratios.get(lang, fallback) for lang, size in by_language) / total
                       if total else fallback)
    profile = ProjectProfile(files=count, bytes=total, median_file_bytes=median, tokens_per_byte=tokens_per_byte,
                             languages=by_language)
    cache.set(key, profile, PROFILE_CACHE_SECONDS)
    return profile


def _prior(profile: ProjectProfile | None, max_steps: int) -> Scenario:
    """The guess without history: more files, more exploring; bigger files, bigger reads."""
    if profile is None or profile.files == 0:
        steps, result = 6, NO_PROJECT_RESULT_TOKENS
    else:
        steps = 5 + round(2 * math.log2(1 + profile.files / 100))
        read = min(profile.median_file_bytes, TOOL_RESULT_MAX_CHARS) * profile.tokens_per_byte
        result = FILE_READ_SHARE * read + (1 - FILE_READ_SHARE) * SEARCH_RESULT_TOKENS
    return Scenario(steps=max(1, min(steps, max_steps)), growth=OUTPUT_PER_STEP + result + MESSAGE_WRAPPING,
                    output_per_step=OUTPUT_PER_STEP)


@dataclass(frozen=True)
class _History:
    steps: list[int]
    growth: list[float]
    output_per_step: list[float]


def _history(workspace: Workspace) -> _History:
    rows = (Reservation.objects.filter(workspace=workspace, status=Reservation.Status.RELEASED, calls__gte=1)
            .order_by("-released_at").values_list("calls", "input_tokens", "output_tokens",
                                                   "first_input_tokens")[:HISTORY_RUNS])
    steps, growth, output = [], [], []
    for calls, input_tokens, output_tokens, first in rows:
        steps.append(calls)
        output.append(output_tokens / calls)
        if calls >= 2:
            growth.append(max(0.0, 2 * (input_tokens - calls * first) / (calls * (calls - 1))))
    return _History(steps=steps, growth=growth, output_per_step=output)


def _blend(prior: float, seen: list[float] | list[int], weight: float) -> float:
    return prior if not seen else (1 - weight) * prior + weight * statistics.median(seen)


def _scenarios(prior: Scenario, history: _History, max_steps: int) -> tuple[Scenario, Scenario, Scenario]:
    weight = len(history.steps) / (len(history.steps) + PRIOR_WEIGHT)
    steps = max(1, min(max_steps, round(_blend(prior.steps, history.steps, weight))))
    growth = _blend(prior.growth, history.growth, weight)
    output = _blend(prior.output_per_step, history.output_per_step, weight)
    expected = Scenario(steps=steps, growth=growth, output_per_step=output)
    low = Scenario(steps=max(1, math.ceil(steps / 3)), growth=growth / 2, output_per_step=output / 2)
    high = Scenario(steps=max_steps, growth=max([2 * growth, *history.growth]),
                    output_per_step=max([2 * output, *history.output_per_step]))
    return low, expected, high


def _priced(scenario: Scenario, *, first_prompt: int, window: int | None, rate: Rate) -> Scenario:
    """Tokens and cost of a scenario. Calls are priced in groups of consecutive steps at their mean size
    (exact for linear prices; tiered ones switch tier at most once per group)."""
    prompts = [first_prompt + math.ceil(k * scenario.growth) for k in range(scenario.steps)]
    if window:
        prompts = [min(p, window) for p in prompts]
    output = math.ceil(scenario.output_per_step)
    size = math.ceil(len(prompts) / PRICE_GROUPS)
    usd = Decimal(0)
    for i in range(0, len(prompts), size):
        group = prompts[i:i + size]
        usd += rate.cost(math.ceil(sum(group) / len(group)), output) * len(group)
    return Scenario(steps=scenario.steps, growth=scenario.growth, output_per_step=scenario.output_per_step,
                    input_tokens=sum(prompts), output_tokens=output * scenario.steps, usd=round_up(usd))


def run_estimate(*, workspace: Workspace, user: User | None, task: str, model: str, project: Project | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS, context_tokens: int | None = None) -> Estimate:
    """The estimate of a run of `task` on `project` with `model` and at most `max_steps` model calls.
    `context_tokens`: the agent's system prompt and tool schemas (default: DEFAULT_CONTEXT_TOKENS)."""
    counter = counter_for(model)
    task_tokens = counter.count(task)
    # The task's message is counted without its text, which was just counted (a 400 KB task takes ~10 ms).
    first_prompt = ((DEFAULT_CONTEXT_TOKENS if context_tokens is None else context_tokens) + task_tokens
                    + count_message_tokens(model=model, messages=[{"role": "user", "content": ""}]))
    profile = project_profile(project=project, counter=counter) if project is not None else None
    history = _history(workspace)
    rate = rate_for(workspace=workspace, model=model)
    window = context_window(model)
    low, expected, high = (_priced(s, first_prompt=first_prompt, window=window, rate=rate)
                           for s in _scenarios(_prior(profile, max_steps), history, max_steps))
    notes = []
    if window and first_prompt > window:
        notes.append(f"The first prompt ({first_prompt} tokens) is larger than the model's context window "
                     f"({window}): the model will refuse it.")
    return Estimate(model=model, tokenizer=counter.name, task_tokens=task_tokens, first_prompt_tokens=first_prompt,
                    low=low, expected=expected, high=high, pricing_source=rate.source,
                    remaining_today_usd=standing(workspace=workspace, user=user).remaining_today_usd,
                    calibrated_runs=len(history.steps), context_window=window, project=profile, notes=notes)


def call_estimate_usd(*, workspace: Workspace, model: str, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None = None,
                      output_tokens: int = CALL_OUTPUT_ALLOWANCE) -> Decimal:
    """What the next model call may cost at most: its prompt counted (messages as the OpenAI API takes
    them, tool schemas included) plus `output_tokens` of answer, priced for the workspace and rounded up.
    The amount the agent passes to call_reserve before the call."""
    prompt = count_message_tokens(model=model, messages=messages, tools=tools)
    window = context_window(model)
    if window:
        prompt = min(prompt, window)
    return round_up(rate_for(workspace=workspace, model=model).cost(prompt, output_tokens))
