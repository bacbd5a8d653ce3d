from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rag_loop.api.deps import PrincipalDep
from rag_loop.api.errors import responses
from rag_loop.api.lean import LeanRoute
from rag_loop.api.schemas import FeedbackOut
from rag_loop.errors import Unauthorized
from rag_loop.feedback.schemas import FeedbackIn
from rag_loop.feedback.service import submit_feedback_async
from rag_loop.services import Services

# The hottest route: a LeanRoute (api/lean.py) parses the body itself, in one step.
router = APIRouter(prefix="/v1", tags=["feedback"], route_class=LeanRoute)


@router.post(
    "/feedback",
    operation_id="submit_feedback",
    status_code=201,
    response_model=FeedbackOut,
    responses={
        200: {"model": FeedbackOut, "description": "an idempotent retry"},
        **responses(400, 401, 403, 404, 409, 413, 422),
    },
    summary="Thumbs, chunk labels, a correction, a source pointer or a comment on an answer",
)
async def feedback_route(request: Request, principal: PrincipalDep, body: FeedbackIn) -> Response:
    """Authorised by the answer's `token`, or by an API key with the feedback scope. A token
    is enough whatever key the client also sends (an ask key, or a bearer value a browser or
    an OpenAI SDK adds): the token is checked, the key is not needed."""
    services: Services = request.app.state.services
    if body.token:
        services.tokens.verify(body.token, body.interaction_id)
        actor = "token"
    elif principal is not None:
        principal.require("feedback")
        actor = f"key:{principal.key_id}"
    else:
        raise Unauthorized(
            "feedback needs the answer's feedback_token in `token`, or an API key with the "
            "feedback scope"
        )
    receipt = await submit_feedback_async(services, body, actor=actor)
    if receipt.created:
        request.app.state.metrics.count_feedback(body)
    # built and serialised once here (FeedbackOut is still the documented response model)
    return Response(
        FeedbackOut.model_validate(receipt.__dict__).model_dump_json(),
        status_code=201 if receipt.created else 200,
        media_type="application/json",
    )
