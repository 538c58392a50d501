from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from accounts.models import User


class EmailBackend(ModelBackend):
    """Email + password, case-insensitive on the email. Hashes a password even for unknown emails so
    the answer takes as long whether or not the account exists."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, email: str | None = None, **kwargs: Any) -> User | None:
        email = (email or username or "").strip().lower()
        if not email or password is None:
            return None
        user = User.objects.filter(email=email).first()
        if user is None:
            User().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None
