"""Budget rows: the caps and price overrides admins set, and the counters, reservations and ledger the
agent's runs move.

Money that SQL adds up (counters, reservations, the ledger) is kept as integer micro-dollars: SQLite
stores a DecimalField as a float, and `spent + reserved + needed <= cap` must be exact on both databases
(50 reservations of $0.02 against a $1 cap must all fit). Caps and prices are Decimals with 6 places.
"""

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import User, Workspace
from api.ids import PrefixedIdField

MICROS_PER_USD = 1_000_000
MAX_CAP_USD = Decimal(1_000_000)  # a larger cap is almost surely a typo
MAX_PRICE_USD_PER_MTOK = Decimal(100_000)
_USD_VALIDATORS = [MinValueValidator(Decimal(0)), MaxValueValidator(MAX_CAP_USD)]


def usd_of(micros: int) -> Decimal:
    """Micro-dollars as a Decimal with exactly 6 places."""
    return (Decimal(micros) / MICROS_PER_USD).quantize(Decimal("0.000001"))


def micros_of(usd: Decimal) -> int:
    """A usd amount (at most 6 places; anything finer is rounded up, never under-counted)."""
    return int((usd * MICROS_PER_USD).to_integral_value(rounding="ROUND_CEILING"))


class Period(models.TextChoices):
    DAY = "day"
    MONTH = "month"


class Cap(models.Model):
    """Spending caps of a workspace (user null) or of one user in it. Null means no cap."""

    id = PrefixedIdField("cap")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="budget_caps")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="+",
                             help_text="Empty: the workspace's own caps. Set: that member's caps in it.")
    daily_usd = models.DecimalField(max_digits=13, decimal_places=6, null=True, blank=True,
                                    validators=_USD_VALIDATORS)
    monthly_usd = models.DecimalField(max_digits=13, decimal_places=6, null=True, blank=True,
                                      validators=_USD_VALIDATORS)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace"], condition=Q(user__isnull=True), name="cap_ws_unique"),
            models.UniqueConstraint(fields=["workspace", "user"], condition=Q(user__isnull=False),
                                    name="cap_ws_user_unique"),
            models.CheckConstraint(condition=Q(daily_usd__gte=0) | Q(daily_usd__isnull=True), name="cap_daily_gte_0"),
            models.CheckConstraint(condition=Q(monthly_usd__gte=0) | Q(monthly_usd__isnull=True),
                                   name="cap_monthly_gte_0"),
        ]

    def __str__(self) -> str:
        return f"caps of {self.user or 'the workspace'} in {self.workspace}"


class PriceOverride(models.Model):
    """A workspace's own price for a model (a self-hosted one: 0, or what it really costs); it wins over
    the genai-prices list."""

    id = PrefixedIdField("prc")
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="price_overrides")
    model = models.CharField(max_length=200)
    input_usd_per_mtok = models.DecimalField(
        max_digits=13, decimal_places=6,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(MAX_PRICE_USD_PER_MTOK)])
    output_usd_per_mtok = models.DecimalField(
        max_digits=13, decimal_places=6,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(MAX_PRICE_USD_PER_MTOK)])
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "model"], name="price_override_ws_model_unique"),
            models.CheckConstraint(condition=Q(input_usd_per_mtok__gte=0) & Q(output_usd_per_mtok__gte=0),
                                   name="price_override_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.model} in {self.workspace}"


class Counter(models.Model):
    """Spent and reserved money of one scope (a workspace, or a user in it) in one period (a UTC day or
    month). The row a reservation's conditional UPDATE checks against the cap: kept for every scope and
    period with activity, capped or not, so a cap set mid-day counts what was already spent."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=5, choices=Period.choices)
    start = models.DateField(help_text="The day, or the first day of the month")
    spent_micro = models.BigIntegerField(default=0)
    reserved_micro = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "period", "start"], condition=Q(user__isnull=True),
                                    name="counter_ws_unique"),
            models.UniqueConstraint(fields=["workspace", "user", "period", "start"], condition=Q(user__isnull=False),
                                    name="counter_ws_user_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.period} {self.start} of {self.user_id or self.workspace_id}"

    @property
    def spent_usd(self) -> Decimal:
        return usd_of(self.spent_micro)

    @property
    def reserved_usd(self) -> Decimal:
        return usd_of(self.reserved_micro)


class Reservation(models.Model):
    """One run's hold on the caps: what is still reserved for it, what it spent, and on which day's and
    month's counters (a run that crosses midnight moves to the new day at its next call_reserve)."""

    class Status(models.TextChoices):
        OPEN = "open"
        RELEASED = "released"

    id = PrefixedIdField("rsv")
    run_id = models.CharField(max_length=64, unique=True)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="budget_reservations")
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    day = models.DateField()
    month = models.DateField()
    reserved_micro = models.BigIntegerField(default=0, help_text="Still held (released at the run's end)")
    granted_micro = models.BigIntegerField(default=0, help_text="Everything ever reserved for the run")
    spent_micro = models.BigIntegerField(default=0)
    overshoot_micro = models.BigIntegerField(
        default=0, help_text="Spent beyond what was reserved: the agent's estimate of a call was too low")
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    first_input_tokens = models.PositiveBigIntegerField(
        default=0, help_text="The first call's prompt (system, tools, task): what the estimate calibrates against")
    created_at = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["workspace", "status", "-released_at"], name="reservation_ws_released")]

    def __str__(self) -> str:
        return f"reservation of {self.run_id} ({self.status})"

    @property
    def reserved_usd(self) -> Decimal:
        return usd_of(self.reserved_micro)

    @property
    def spent_usd(self) -> Decimal:
        return usd_of(self.spent_micro)

    @property
    def overshoot_usd(self) -> Decimal:
        return usd_of(self.overshoot_micro)


class LedgerRow(models.Model):
    """What a workspace spent on one model on one UTC day: settled per model call, so today's row moves
    while runs go; `runs` counts the runs that ended that day."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    model = models.CharField(max_length=200)
    usd_micro = models.BigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    calls = models.PositiveIntegerField(default=0)
    runs = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "day", "model"], name="ledger_ws_day_model_unique")]

    def __str__(self) -> str:
        return f"{self.day} {self.model} in {self.workspace_id}"

    @property
    def usd(self) -> Decimal:
        return usd_of(self.usd_micro)
