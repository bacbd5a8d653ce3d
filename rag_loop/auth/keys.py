"""API keys: `rl_<id>_<secret>`; only a SHA-256 of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from rag_loop.db.models import ApiKey, AuditEntry, now_of
from rag_loop.errors import Forbidden, InvalidInput, NotFound, Unauthorized

# review: the corrections queue (and the console's review pages); admin: everything
SCOPES = ("ask", "feedback", "review", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key with its scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """How audit entries and reviews name this caller: the key's name and id."""
        return f"{self.name[:100]} (key:{self.key_id})"

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def require(self, scope: str) -> None:
        if scope not in self.scopes and "admin" not in self.scopes:
            raise Forbidden(
                f"this API key lacks the {scope!r} scope; create one with "
                f"`rag-loop keys create NAME --scope {scope}`"
            )


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str, scopes: list[str], actor: str) -> tuple[ApiKey, str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be among {', '.join(SCOPES)}; got {scopes or 'none'}")
    if not name.strip():
        raise InvalidInput("give the key a name")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(id=key_id, name=name.strip(), key_hash=_hash(secret), scopes=sorted(set(scopes)))
    session.add(key)
    session.add(
        AuditEntry(
            actor=actor,
            action="key.create",
            target=f"api_key:{key_id}",
            details={"name": key.name, "scopes": key.scopes},
        )
    )
    return key, f"rl_{key_id}_{secret}"


def revoke_key(session: Session, key_id: str, actor: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id!r}; `rag-loop keys list` shows them")
    if key.revoked_at is None:
        key.revoked_at = now_of(session)
        session.add(AuditEntry(actor=actor, action="key.revoke", target=f"api_key:{key_id}"))
    return key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def authenticate(session: Session, presented: str) -> Principal:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "rl":
        raise Unauthorized("malformed API key; expected rl_<id>_<secret>")
    key = session.get(ApiKey, parts[1])
    if key is None or not hmac.compare_digest(key.key_hash, _hash(parts[2])):
        raise Unauthorized("unknown API key")
    if key.revoked_at is not None:
        raise Unauthorized("this API key has been revoked")
    return Principal(key_id=key.id, name=key.name, scopes=frozenset(key.scopes))


def principal_of(session: Session, key_id: str) -> Principal:
    """The principal of a key id a console session holds; revoked or deleted keys end it."""
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        raise Unauthorized("this session's API key is no longer valid; sign in again")
    return Principal(key_id=key.id, name=key.name, scopes=frozenset(key.scopes))
