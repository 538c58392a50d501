"""Serializer fields and a base serializer for JSON bodies taken at their word: DRF's own fields coerce
("30" → 30, 42 → "42", "yes" → True), which turns a client's mistake into a value it did not mean.
Every API that reads a JSON body uses these."""

from typing import Any

from rest_framework import serializers


class StrictBooleanField(serializers.BooleanField):
    """JSON true/false only: "yes", 1 or "false" are more likely mistakes than intentions."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictIntegerField(serializers.IntegerField):
    """Integers as JSON numbers only: "30" or 30.0 are more likely mistakes than intentions."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string and nothing else (DRF's CharField would turn 42 into "42")."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class PrintableCharField(StrictCharField):
    """A JSON string of printable characters (a name, a model id): no control characters."""

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not value.isprintable():
            raise serializers.ValidationError("Must contain printable characters only.")
        return value


class RejectUnknown(serializers.Serializer):
    """A body with a field the serializer does not know is a 400 naming it: a misspelt field silently
    ignored would leave the caller believing it was used."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["The body must be a JSON object."]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
