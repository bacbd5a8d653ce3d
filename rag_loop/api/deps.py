"""Request dependencies: the services object and the caller's API key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from rag_loop.auth.keys import Principal, authenticate
from rag_loop.errors import Unauthorized
from rag_loop.services import Services

# The dependencies are `async def` so FastAPI runs them on the event loop: a sync dependency
# costs a thread-pool hop on every request. Blocking work (SQL) is handed to the pool once.


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def optional_principal(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal | None:
    """The API key from `Authorization: Bearer rl_...` or `X-API-Key`, if any."""
    presented = x_api_key
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("use `Authorization: Bearer <api key>`")
        presented = value.strip()
    if not presented:
        return None

    def lookup() -> Principal:
        with services.sessions() as session:
            return authenticate(session, presented)

    return await run_in_threadpool(lookup)


PrincipalDep = Annotated[Principal | None, Depends(optional_principal)]


def require(scope: str) -> Callable[[Principal | None], Awaitable[Principal]]:
    async def dependency(principal: PrincipalDep) -> Principal:
        if principal is None:
            raise Unauthorized(f"this route needs an API key with the {scope!r} scope")
        principal.require(scope)
        return principal

    return dependency


AdminDep = Annotated[Principal, Depends(require("admin"))]
