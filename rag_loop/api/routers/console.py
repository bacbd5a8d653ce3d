"""The operator console at `/console`: server-rendered pages for reviewers and operators.

    sign-in (an API key with the review or admin scope) -> a session cookie
    reviews       pending and disputed corrections; one correction: its answer's chunks,
                  the drafted amendment as a diff; approve (amend or add), reject; amendments
    interactions  search; one answer's lineage                              (admin)
    loop          cycles, gate figures, stage times, shadow; approve, reject, resume, roll
                  back, start (each confirmed first); the registry backlog  (admin)
    evaluations   the report's plots and tables, per index version          (admin)

Every action calls the same service function as the API and the CLI, with the signed-in
key as the actor (its name is in the audit log). The session cookie holds the key's id and
a CSRF token, signed, HttpOnly, SameSite=Strict; every form carries the token and a POST
without it changes nothing (403). A page or action that cannot go on raises `Refused`,
which `create_app` turns into an HTML page (or the sign-in redirect). The key is looked
up on every request: revoking it ends its sessions. No JavaScript and nothing from a CDN:
it works offline.
"""

from __future__ import annotations

import hmac
import urllib.parse
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.templating import Jinja2Templates

from rag_loop import jobs
from rag_loop.auth.keys import Principal, authenticate, principal_of
from rag_loop.auth.sessions import ConsoleSession, new_csrf
from rag_loop.db.engine import transaction
from rag_loop.db.models import AuditEntry
from rag_loop.errors import RagLoopError, Unauthorized
from rag_loop.evaluation import service as evaluation
from rag_loop.evaluation.report import REPORT_CYCLES, plots
from rag_loop.feedback import corrections
from rag_loop.feedback.lineage import search, show
from rag_loop.index.versions import list_versions
from rag_loop.inputs import MAX_ROW_ID, Text
from rag_loop.loop import cycle
from rag_loop.loop.audit import trace
from rag_loop.loop.states import Action, allows, check_action
from rag_loop.services import Services

router = APIRouter(prefix="/console", include_in_schema=False)
RowIdPath = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]  # what the database can hold

SESSION_COOKIE = "rag_loop_console"
CSRF_COOKIE = "rag_loop_console_csrf"  # the sign-in form's (double submit)
FLASH_COOKIE = "rag_loop_console_flash"
CONSOLE_SCOPES = frozenset({"review", "admin"})
LOOP_ACTIONS = {
    "approve": "Approve and promote cycle {cycle}'s held candidate",
    "reject": "Reject cycle {cycle}'s candidate",
    "resume": "Resume cycle {cycle} from the step it stopped in",
    "rollback": "Roll back cycle {cycle}: serve the index that served before it",
    "start": "Start a new loop cycle now",
    "discard": "Discard outbox entry {entry}: it is marked done without being applied",
}


@cache
def _templates() -> Jinja2Templates:
    environment = Environment(
        loader=PackageLoader("rag_loop.api", "templates/console"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=environment)


class Visitor:
    """Who is looking at a page: the signed-in key and its session, or nobody."""

    def __init__(self, principal: Principal, session: ConsoleSession) -> None:
        self.principal = principal
        self.session = session

    @property
    def admin(self) -> bool:
        return self.principal.admin

    @property
    def actor(self) -> str:
        return self.principal.actor


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _visitor(request: Request) -> Visitor | None:
    services = _services(request)
    session = services.console_sessions.read(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    with services.sessions() as db:
        try:
            principal = principal_of(db, session.key_id)
        except Unauthorized:
            return None
    if not CONSOLE_SCOPES & principal.scopes:
        return None
    return Visitor(principal, session)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """Every console cookie: HttpOnly, SameSite=Strict, the console's path, Secure on HTTPS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def _redirect(request: Request, to: str, flash: str | None = None, *, ok: bool = True) -> Response:
    response = RedirectResponse(to, status_code=303)
    if flash:
        message = urllib.parse.quote(("ok:" if ok else "error:") + flash[:600])
        _set_cookie(response, request, FLASH_COOKIE, message, 60)
    return response


def _render(
    request: Request,
    template: str,
    visitor: Visitor | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    flash = urllib.parse.unquote(request.cookies.get(FLASH_COOKIE, ""))
    kind, _, message = flash.partition(":")
    nav = [("Reviews", "/console/reviews")]
    if visitor is not None and visitor.admin:
        nav += [
            ("Interactions", "/console/interactions"),
            ("Loop", "/console/loop"),
            ("Evaluations", "/console/evaluations"),
        ]
    response = _templates().TemplateResponse(
        request,
        template,
        {
            "visitor": visitor,
            "csrf": visitor.session.csrf if visitor else "",
            "nav": [
                {"label": label, "href": href, "current": request.url.path.startswith(href)}
                for label, href in nav
            ],
            "flash": message,
            "flash_kind": "error" if kind == "error" else "ok",
            **context,
        },
        status_code=status_code,
    )
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/console")
    return response


class Refused(Exception):
    """Why a console page or action cannot go on: a page with the status and the message
    (`refused_page`, installed by `create_app`), or, with `location`, a redirect (a visitor
    who is not signed in goes to the sign-in page)."""

    def __init__(self, status: int, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.location = location

    @classmethod
    def of(cls, error: RagLoopError) -> Refused:
        """A service's refusal (an unknown id, a bad filter) as a console page."""
        return cls(error.status_code, error.message)


TITLES = {401: "Signed out", 403: "Not allowed", 404: "Not found"}


async def refused_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    if exc.location is not None:
        return RedirectResponse(exc.location, status_code=303)
    visitor = await run_in_threadpool(_visitor, request)
    return _render(
        request,
        "forbidden.html",
        visitor,
        status_code=exc.status,
        title=TITLES.get(exc.status, "Cannot do this"),
        message=exc.message,
    )


def _gate(request: Request, *, admin: bool = False) -> Visitor:
    """A page's signed-in visitor; otherwise the sign-in page, or a 403 for a reviewer on
    an admin page."""
    visitor = _visitor(request)
    if visitor is None:
        target = urllib.parse.quote(request.url.path)
        raise Refused(401, "Sign in first.", location=f"/console/sign-in?next={target}")
    if admin and not visitor.admin:
        raise Refused(
            403, "This page needs an API key with the admin scope; yours can review corrections."
        )
    return visitor


def _checked(request: Request, csrf_token: str | None, *, admin: bool = False) -> Visitor:
    """A POST's visitor, with its form's CSRF token checked; anything else is refused with
    nothing changed."""
    visitor = _visitor(request)
    if visitor is None:
        raise Refused(401, "Your session has ended; sign in again.")
    if not visitor.session.check(csrf_token):
        raise Refused(403, "The form's security token is missing or wrong; reload the page.")
    if admin and not visitor.admin:
        raise Refused(403, "This action needs an API key with the admin scope.")
    return visitor


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/console") and "//" not in target:
        return target
    return "/console/reviews"


# -- static -------------------------------------------------------------------------------


@cache
def _stylesheet() -> bytes:
    return files("rag_loop.api").joinpath("static", "console.css").read_bytes()


@router.get("/static/console.css")
async def stylesheet() -> Response:
    return Response(
        _stylesheet(),
        media_type="text/css; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300"},
    )


# -- sign-in ------------------------------------------------------------------------------


@router.get("")
def home(request: Request) -> Response:
    return RedirectResponse("/console/reviews", status_code=303)


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    token = request.cookies.get(CSRF_COOKIE) or new_csrf()
    response = _render(
        request, "sign_in.html", None, title="Sign in", sign_in_csrf=token, next=_safe_next(next)
    )
    _set_cookie(response, request, CSRF_COOKIE, token, 3600)
    return response


@router.post("/sign-in")
def sign_in(
    request: Request,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/console/reviews",
) -> Response:
    services = _services(request)
    expected = request.cookies.get(CSRF_COOKIE)
    if not expected or not hmac.compare_digest(expected, csrf_token):
        raise Refused(403, "The sign-in form expired; reload the page.")
    try:
        with transaction(services.sessions) as db:
            principal = authenticate(db, api_key.strip())
            if not CONSOLE_SCOPES & principal.scopes:
                raise Unauthorized(
                    "the console needs a key with the review or admin scope; create one "
                    "with `rag-loop keys create NAME --scope review`"
                )
            db.add(AuditEntry(actor=principal.actor, action="console.sign_in", target="console"))
    except RagLoopError as exc:
        return _render(
            request,
            "sign_in.html",
            None,
            status_code=401,
            title="Sign in",
            sign_in_csrf=expected,
            next=_safe_next(next),
            error=exc.message,
        )
    response = _redirect(request, _safe_next(next), f"Signed in as {principal.name}.")
    session = services.console_sessions.issue(principal.key_id)
    _set_cookie(response, request, SESSION_COOKIE, session, services.console_sessions.ttl_seconds)
    response.delete_cookie(CSRF_COOKIE, path="/console")
    return response


@router.post("/sign-out")
def sign_out(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    visitor = _checked(request, csrf_token)
    with transaction(_services(request).sessions) as db:
        db.add(AuditEntry(actor=visitor.actor, action="console.sign_out", target="console"))
    response = _redirect(request, "/console/sign-in", "Signed out.")
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


# -- reviews ------------------------------------------------------------------------------


@router.get("/reviews")
def reviews_page(request: Request, status: str = "open") -> Response:
    visitor = _gate(request)
    services = _services(request)
    statuses = ("pending", "disputed") if status == "open" else (status,)
    try:
        rows = [r for s in statuses for r in corrections.list_corrections(services, s, 200)]
        amendments = corrections.list_amendment_views(services, None)
    except RagLoopError as exc:
        raise Refused.of(exc) from exc
    return _render(
        request,
        "reviews.html",
        visitor,
        title="Review queue",
        status=status,
        rows=sorted(rows, key=lambda r: r["id"]),
        amendments=[a for a in amendments if a["status"] in ("active", "flagged")],
        approvals=services.settings.review.approvals,
    )


@router.get("/reviews/{correction_id}")
def review_page(request: Request, correction_id: RowIdPath) -> Response:
    visitor = _gate(request)
    services = _services(request)
    try:
        view = corrections.get_correction(services, correction_id)
    except RagLoopError as exc:
        raise Refused.of(exc) from exc
    return _render(
        request,
        "review.html",
        visitor,
        title=f"Correction {correction_id}",
        c=view,
        approvals=services.settings.review.approvals,
        open=view["status"] in ("pending", "disputed"),
    )


@router.post("/reviews/{correction_id}")
def review_action(
    request: Request,
    correction_id: RowIdPath,
    decision: Annotated[str, Form(max_length=16)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    chunk_id: Annotated[str | None, Form(max_length=64)] = None,
    text: Annotated[str | None, Form(max_length=8000)] = None,
    note: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    visitor = _checked(request, csrf_token)
    services = _services(request)
    back = f"/console/reviews/{correction_id}"
    note = (note or "").strip() or None
    try:
        if decision == "reject":
            view = corrections.reject(
                services, correction_id, reviewer=visitor.actor, note=note, admin=visitor.admin
            )
        elif decision in ("amend", "add", "approve"):
            view = corrections.approve(
                services,
                correction_id,
                reviewer=visitor.actor,
                note=note,
                mode="amend" if decision == "amend" else "add" if decision == "add" else None,
                chunk_id=chunk_id if decision == "amend" else None,
                text=text if decision == "amend" else None,
                admin=visitor.admin,
            )
        else:
            return _redirect(request, back, "Choose approve or reject.", ok=False)
    except RagLoopError as exc:
        return _redirect(request, back, exc.message, ok=False)
    return _redirect(
        request,
        back,
        f"Correction {correction_id} is {view['status']}"
        + (" and serves now." if view["applied"] else "."),
    )


@router.post("/amendments/{amendment_id}/revert")
def revert_action(
    request: Request,
    amendment_id: RowIdPath,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    note: Annotated[str | None, Form(max_length=2000)] = None,
    back: Annotated[str, Form(max_length=500)] = "/console/reviews",
) -> Response:
    visitor = _checked(request, csrf_token)
    try:
        corrections.revert_amendment(
            _services(request), amendment_id, actor=visitor.actor, note=(note or None)
        )
    except RagLoopError as exc:
        return _redirect(request, _safe_next(back), exc.message, ok=False)
    return _redirect(
        request, _safe_next(back), f"Amendment {amendment_id} reverted: the old text serves."
    )


# -- interactions -------------------------------------------------------------------------


def _day(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError as exc:
        raise Refused(400, f"{field}: give a date as YYYY-MM-DD") from exc


@router.get("/interactions")
def interactions_page(
    request: Request,
    q: Annotated[Text, Query(max_length=200)] = "",
    since: Annotated[str, Query(max_length=10)] = "",
    until: Annotated[str, Query(max_length=10)] = "",
    thumb: Literal["", "up", "down", "none"] = "",
    index_version: Annotated[str, Query(max_length=9, pattern="^[0-9]*$")] = "",
) -> Response:
    visitor = _gate(request, admin=True)
    services = _services(request)
    try:
        end = _day(until, "until")
        rows = search(
            services.sessions,
            text=q or None,
            since=_day(since, "since"),
            until=end + timedelta(days=1) if end else None,
            thumb=thumb or None,
            index_version=int(index_version) if index_version else None,
            limit=100,
        )
        with services.sessions() as db:
            versions = [v.id for v, _ in list_versions(db)]
    except RagLoopError as exc:
        raise Refused.of(exc) from exc
    return _render(
        request,
        "interactions.html",
        visitor,
        title="Interactions",
        rows=rows,
        versions=versions,
        filters={
            "q": q,
            "since": since,
            "until": until,
            "thumb": thumb,
            "index_version": index_version,
        },
    )


@router.get("/interactions/{interaction_id}")
def interaction_page(
    request: Request, interaction_id: Annotated[Text, Path(max_length=36)]
) -> Response:
    visitor = _gate(request, admin=True)
    services = _services(request)
    try:
        view = show(services.sessions, interaction_id)
        walk = trace(services.sessions, interaction_id)
    except RagLoopError as exc:
        raise Refused.of(exc) from exc
    return _render(request, "interaction.html", visitor, title="Interaction", i=view, trace=walk)


# -- the loop -----------------------------------------------------------------------------


@router.get("/loop")
def loop_page(request: Request) -> Response:
    visitor = _gate(request, admin=True)
    services = _services(request)
    cycles = cycle.list_cycles(services, 30)
    for view in cycles:
        view["actions"] = [
            a.value
            for a in (Action.APPROVE, Action.REJECT, Action.RESUME, Action.ROLLBACK)
            if allows(a, view["state"])
        ]
    with services.sessions() as db:
        versions = [
            {"id": v.id, "aliases": aliases, "status": v.status, "reason": v.reason}
            for v, aliases in list_versions(db)
        ][:10]
    return _render(
        request,
        "loop.html",
        visitor,
        title="Loop",
        cycles=cycles,
        backlog=services.outbox.backlog(),
        failing=[e for e in services.outbox.entries(status="pending") if e["last_error"]],
        versions=versions,
    )


@router.get("/loop/confirm")
def confirm_page(
    request: Request,
    action: Annotated[str, Query(max_length=16)] = "",
    cycle_id: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
    entry_id: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Response:
    visitor = _gate(request, admin=True)
    if action not in LOOP_ACTIONS:
        return _redirect(request, "/console/loop", f"Unknown action {action!r}.", ok=False)
    return _render(
        request,
        "confirm.html",
        visitor,
        title="Confirm",
        action=action,
        cycle_id=cycle_id,
        entry_id=entry_id,
        question=LOOP_ACTIONS[action].format(cycle=cycle_id, entry=entry_id),
        needs_reason=action in ("reject", "rollback", "discard"),
        reason_required=action == "discard",
    )


@router.post("/loop/{action}")
def loop_action(
    request: Request,
    action: str,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    cycle_id: Annotated[int, Form(ge=0, le=MAX_ROW_ID)] = 0,
    entry_id: Annotated[int, Form(ge=0, le=MAX_ROW_ID)] = 0,
    confirmed: Annotated[str, Form(max_length=8)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    visitor = _checked(request, csrf_token, admin=True)
    if action not in LOOP_ACTIONS or confirmed != "yes":
        return _redirect(request, "/console/loop", "Nothing done: confirm first.", ok=False)
    services = _services(request)
    actor = visitor.actor
    try:
        if action == "approve":
            cycle.approve(services, cycle_id, actor=actor)
            done = f"Cycle {cycle_id}'s candidate was promoted."
        elif action == "reject":
            cycle.reject(services, cycle_id, actor=actor, reason=reason)
            done = f"Cycle {cycle_id}'s candidate was rejected."
        elif action == "resume":
            check_action(Action.RESUME, cycle_id, cycle.cycle_view(services, cycle_id)["state"])
            jobs.submit(services, "loop_cycle", {"cycle_id": cycle_id, "resume": True}, actor=actor)
            done = f"Cycle {cycle_id} resumes in the background."
        elif action == "discard":
            services.outbox.discard(entry_id, actor=actor, reason=reason)
            done = f"Outbox entry {entry_id} was discarded."
        elif action == "rollback":
            view = cycle.rollback(
                services, actor=actor, reason=reason or "console", cycle_id=cycle_id or None
            )
            done = (
                f"Rolled back cycle {view['id']}: index {view['champion_index_version_id']} serves."
            )
        else:
            started = cycle.start_cycle(services, trigger="console", actor=actor)
            jobs.submit(services, "loop_cycle", {"cycle_id": started}, actor=actor)
            done = f"Cycle {started} started; it runs in the background."
    except RagLoopError as exc:
        return _redirect(request, "/console/loop", exc.message, ok=False)
    return _redirect(request, "/console/loop", done)


# -- evaluations --------------------------------------------------------------------------


@router.get("/evaluations")
def evaluations_page(request: Request) -> Response:
    visitor = _gate(request, admin=True)
    services = _services(request)
    summary = evaluation.summary(services, cycle.list_cycles(services, REPORT_CYCLES))
    return _render(
        request,
        "evaluations.html",
        visitor,
        title="Evaluations and drift",
        s=summary,
        plots=plots(summary),
    )
