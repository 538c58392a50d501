"""Writes of the agent app. (The run loop's services come with the loop.)"""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from agent.models import AgentPrefs
from api.errors import InvalidRequest

_UNSET = object()


@transaction.atomic
def agent_prefs_update(*, user: User, model: str | object = _UNSET,
                       max_cost_usd_per_run: Decimal | None | object = _UNSET,
                       max_steps: int | object = _UNSET,
                       auto_rollback_on_failure: bool | object = _UNSET) -> AgentPrefs:
    """A partial update: only the arguments given change; the row is created on first save.
    The values are already validated (the API's input serializer, the admin's model validators)."""
    # The row lock keeps two concurrent partial updates from overwriting each other's fields.
    prefs, _ = AgentPrefs.objects.select_for_update().get_or_create(user=user)
    changes = {"model": model, "max_cost_usd_per_run": max_cost_usd_per_run, "max_steps": max_steps,
               "auto_rollback_on_failure": auto_rollback_on_failure}
    for field, value in changes.items():
        if value is not _UNSET:
            setattr(prefs, field, value)
    try:
        prefs.full_clean(exclude=["user"])
    except ValidationError as exc:
        raise InvalidRequest("The prefs are invalid.", details=exc.message_dict) from exc
    prefs.save()
    return prefs
