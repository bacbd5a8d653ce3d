"""Operator console sessions: a signed, expiring cookie with the API key's id and a CSRF
token, never the key itself. The key is looked up on every request, so revoking it ends
its sessions at once."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer


@dataclass(frozen=True)
class ConsoleSession:
    key_id: str
    csrf: str

    def check(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf, presented)


class ConsoleSessions:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="rag-loop.console")
        self.ttl_seconds = ttl_seconds

    def issue(self, key_id: str) -> str:
        return self._serializer.dumps({"key": key_id, "csrf": secrets.token_urlsafe(24)})

    def read(self, value: str | None) -> ConsoleSession | None:
        """The session a cookie holds, or None (missing, forged or expired)."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=self.ttl_seconds)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(data, dict) or not {"key", "csrf"} <= data.keys():
            return None
        return ConsoleSession(str(data["key"]), str(data["csrf"]))


def new_csrf() -> str:
    """The sign-in form's token, kept in a cookie beside the form (double submit)."""
    return secrets.token_urlsafe(24)
