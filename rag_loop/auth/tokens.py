"""Signed, expiring feedback tokens: one per answer, safe to hand to a browser."""

from __future__ import annotations

import secrets
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from rag_loop.errors import Unauthorized


def load_or_create_secret(data_dir: Path) -> str:
    """The signing key kept in the data dir, created (mode 0600) on first use."""
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secret)
    tmp.chmod(0o600)
    try:
        tmp.rename(path) if not path.exists() else tmp.unlink()
    except FileExistsError:
        tmp.unlink()
    return path.read_text().strip()


class FeedbackTokens:
    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="rag-loop.feedback")
        self.ttl_seconds = ttl_seconds

    def issue(self, interaction_id: str) -> str:
        return self._serializer.dumps(interaction_id)

    def verify(self, token: str, interaction_id: str) -> None:
        try:
            signed_for = self._serializer.loads(token, max_age=self.ttl_seconds)
        except SignatureExpired as exc:
            raise Unauthorized(
                "the feedback token has expired; feedback on this answer now needs an API key "
                "with the feedback scope"
            ) from exc
        except BadSignature as exc:
            raise Unauthorized("the feedback token is not valid") from exc
        if signed_for != interaction_id:
            raise Unauthorized("the feedback token belongs to another interaction")
