import re

from django.contrib.auth.password_validation import CommonPasswordValidator
from django.core.exceptions import ValidationError

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_SEQUENCES = ("abcdefghijklmnopqrstuvwxyz", "qwertyuiopasdfghjklzxcvbnm", "01234567890", "qwertzuiop", "azertyuiop")


class BreachedPatternValidator:
    """Rejects the shapes that fill breach dumps: a common password dressed up with leetspeak,
    capitals or a number/year/symbol suffix ("P@ssw0rd2024!"), keyboard runs and repeated characters."""

    def __init__(self) -> None:
        self._common = CommonPasswordValidator().passwords

    def _core(self, password: str) -> str:
        stripped = re.sub(r"[\d\W_]+$", "", password.lower())
        stripped = re.sub(r"^[\d\W_]+", "", stripped)
        return stripped.translate(_LEET)

    def validate(self, password: str, user: object = None) -> None:
        lowered = password.lower()
        core = self._core(password)
        if len(set(lowered)) <= 2:
            raise ValidationError("This password is a repeated pattern.", code="password_breached_pattern")
        if any(lowered in seq or lowered in seq[::-1] for seq in _SEQUENCES) or (
            len(core) >= 4 and any(core in seq for seq in _SEQUENCES)
        ):
            raise ValidationError("This password is a keyboard sequence.", code="password_breached_pattern")
        if core and (core in self._common or lowered.translate(_LEET) in self._common):
            raise ValidationError(
                "This password is a common password with small changes, as found in breaches.",
                code="password_breached_pattern",
            )

    def get_help_text(self) -> str:
        return "Your password can't be a common password with small changes."
