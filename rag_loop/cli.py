"""The `rag-loop` command line. It calls the same services as the API.

User mistakes print `error: <message>` on stderr and exit non-zero (2 bad input, 3 auth,
4 not found, 5 conflict, 6 a backend is down); never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from rag_loop.errors import InvalidInput, RagLoopError
from rag_loop.files import write_texts_whole
from rag_loop.inputs import problem
from rag_loop.settings import Settings, pass_to_workers

app = typer.Typer(
    name="rag-loop",
    help="A RAG service that learns from its users. Settings come from RAG_LOOP_* "
    "environment variables (see the README).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
corrections_app = typer.Typer(
    help="Review corrections: list, show, approve (add or amend), reject; amendments.",
    no_args_is_help=True,
)
interactions_app = typer.Typer(help="Look at logged interactions.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys with scopes (ask, feedback, review, admin).", no_args_is_help=True
)
export_app = typer.Typer(help="Export datasets.", no_args_is_help=True)
index_app = typer.Typer(help="Index versions.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
eval_app = typer.Typer(
    help="Evaluation runs: golden sets and production answers, scored with Ragas.",
    no_args_is_help=True,
)
drift_app = typer.Typer(help="Data and concept drift.", no_args_is_help=True)
events_app = typer.Typer(help="Events the loop reacts to (e.g. drift).", no_args_is_help=True)
demo_app = typer.Typer(help="Demo and benchmark helpers.", no_args_is_help=True)
loop_app = typer.Typer(
    help="The training loop: feedback -> fine-tuned retriever -> gated promotion, rollback.",
    no_args_is_help=True,
)
app.add_typer(corrections_app, name="corrections")
app.add_typer(interactions_app, name="interactions")
app.add_typer(keys_app, name="keys")
app.add_typer(export_app, name="export")
app.add_typer(index_app, name="index")
app.add_typer(db_app, name="db")
app.add_typer(eval_app, name="eval")
app.add_typer(drift_app, name="drift")
app.add_typer(events_app, name="events")
app.add_typer(loop_app, name="loop")
app.add_typer(demo_app, name="demo")
jobs_app = typer.Typer(
    help="Background jobs: evaluations, index builds, loop cycles.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
outbox_app = typer.Typer(
    help="The registry's backlog: MLflow runs and aliases and collection drops that follow "
    "SQL changes (applied after commit, retried while MLflow or Chroma is down).",
    no_args_is_help=True,
)
app.add_typer(outbox_app, name="outbox")

CLI_ACTOR = "cli"
DEFAULT_SCOPES = ["ask", "feedback"]
DEFAULT_FORMATS = ["jsonl", "parquet"]


class State:
    data_dir: Path | None = None


def settings() -> Settings:
    try:
        loaded = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RAG_LOOP_{'_'.join(str(p).upper() for p in e['loc'])}: {problem(e)}"
            for e in exc.errors()
        )
        raise InvalidInput(f"invalid settings: {problems}") from exc
    if State.data_dir is not None:
        loaded.data_dir = State.data_dir
    return loaded


def services(**kwargs: Any) -> Any:
    from rag_loop.services import Services

    return Services.from_settings(settings(), **kwargs)


def emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@app.callback()
def main_options(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Data directory (overrides RAG_LOOP_DATA_DIR).", show_default=False),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    State.data_dir = data_dir
    level = logging.INFO if verbose else logging.WARNING
    # the handler has the level too: a library that sets its own logger to DEBUG when it is
    # imported (bm25s does) would otherwise print its debug lines through it
    handler = logging.StreamHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if not verbose:
        for noisy in ("mlflow", "alembic", "chromadb"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.", min=1, max=65535)] = 8000,
    ingest_corpus: Annotated[
        bool,
        typer.Option(
            "--ingest/--no-ingest",
            help="Ingest RAG_LOOP_CORPUS_PATH first when there is no serving index.",
        ),
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            help="API processes on this port (uvicorn workers); each loads the embedder.", min=1
        ),
    ] = 1,
) -> None:
    """Start the API (ingesting the sample corpus on first start)."""

    import uvicorn

    from rag_loop.api import create_app
    from rag_loop.corpus.ingest import ingest
    from rag_loop.index.versions import champion_or_none

    check_can_listen(host, port)  # before the models load and the corpus is ingested
    svc = services()  # migrates the database and creates the token secret, once, here
    config = svc.settings
    with svc.sessions() as session:
        has_index = champion_or_none(session) is not None
    if not has_index and ingest_corpus and config.corpus_path is not None:
        typer.echo(f"no serving index yet: ingesting {config.corpus_path}", err=True)
        result = ingest(svc, config.corpus_path, actor=CLI_ACTOR, progress=True)
        typer.echo(
            f"index version {result.index_version_id}: {result.chunks_total} chunks", err=True
        )
    where = f"http://{host}:{port}"
    typer.echo(f"rag-loop serving on {where} (data dir {config.data_dir})", err=True)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning"}
    if workers == 1:
        with started_or_exit_1():
            uvicorn.run(create_app(config, svc), access_log=False, **options)
        return
    # Several processes: each builds its app from the same settings (the environment, and
    # the data dir of --data-dir passed on through it). Embedded Chroma is one process's:
    # with workers, Chroma must be a server (RAG_LOOP_CHROMA_HOST).
    if config.chroma.host is None:
        raise InvalidInput("--workers > 1 needs a Chroma server: set RAG_LOOP_CHROMA_HOST")
    svc.close()
    pass_to_workers(config)
    with started_or_exit_1():
        uvicorn.run(
            "rag_loop.api.app:app_from_environment",
            factory=True,
            workers=workers,
            access_log=False,
            **options,
        )


def check_can_listen(host: str, port: int) -> None:
    """Bind every address the host resolves to, as uvicorn's one process will (asyncio's
    `create_server`: SO_REUSEADDR, IPv6 sockets IPv6-only; "" is every interface), and let
    them go: a port in use on any of them, or a host that is not this machine's, is bad
    input, said in one line."""
    import socket

    held: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(infos):
            probe = socket.socket(family, kind, proto)
            held.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
    except OSError as exc:  # socket.gaierror is one too
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    finally:
        for probe in held:
            probe.close()


@contextmanager
def started_or_exit_1() -> Iterator[None]:
    """uvicorn exits with 3 when the server does not start (its reason logged above), which
    is the CLI's code for auth: exit 1 instead, as for anything else the system refused."""
    from uvicorn.config import STARTUP_FAILURE

    try:
        yield
    except SystemExit as exc:
        if exc.code == STARTUP_FAILURE:
            typer.echo("error: the API did not start (the reason is above)", err=True)
            sys.exit(1)
        raise


@app.command("worker")
def worker(
    threads: Annotated[
        int | None,
        typer.Option(help="Jobs at once (default RAG_LOOP_QUEUE_WORKER_THREADS).", min=1),
    ] = None,
) -> None:
    """Run queued jobs (evaluations, index builds, loop cycles) from the task queue at
    RAG_LOOP_QUEUE_BROKER_URL until stopped (Ctrl-C or SIGTERM). Run as many as you like."""
    from rag_loop.queue import run_worker

    svc = services()
    typer.echo(
        f"rag-loop worker on {svc.settings.queue.broker_url} (data dir {svc.settings.data_dir})",
        err=True,
    )
    run_worker(svc, threads=threads)


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 50,
    status: Annotated[str | None, typer.Option(help="queued, running, done or failed.")] = None,
) -> None:
    """Jobs, newest first."""
    from rag_loop import jobs

    emit(jobs.list_jobs(services(), limit, status))


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """One job: status, attempts, worker, result or error."""
    from rag_loop import jobs

    emit(jobs.get(services(), job_id))


@outbox_app.command("list")
def outbox_list(
    status: Annotated[str, typer.Option(help="pending, done or all.")] = "pending",
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 50,
) -> None:
    """The backlog (pending, failing, oldest, last error) and the entries, newest first."""
    svc = services()
    emit(
        {"backlog": svc.outbox.backlog(), "entries": svc.outbox.entries(status=status, limit=limit)}
    )


@outbox_app.command("flush")
def outbox_flush() -> None:
    """Apply every pending entry now, whatever its backoff says; prints what was applied,
    what failed (still pending) and how many remain."""
    emit(services().outbox.flush(now_too=True).as_dict())


@outbox_app.command("discard")
def outbox_discard(
    entry_id: Annotated[int, typer.Argument(help="The entry id (`rag-loop outbox list`).")],
    reason: Annotated[str, typer.Option(help="Why (for the audit log); required.")] = "",
) -> None:
    """Give up on a pending entry that can never be applied: marked done without its
    effect, with the reason in the audit log. SQL is untouched."""
    emit(services().outbox.discard(entry_id, actor=CLI_ACTOR, reason=reason))


@app.command("ingest")
def ingest_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder, a .md/.txt/.jsonl file, or a BEIR folder with corpus.jsonl."
        ),
    ],
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Ingest documents; builds a new index version only when something changed."""
    from rag_loop.corpus.ingest import ingest

    emit(ingest(services(), path, actor=CLI_ACTOR, progress=progress).as_dict())


@app.command("ask")
def ask_command(
    question: Annotated[str, typer.Argument(help="The question.")],
    top_k: Annotated[int | None, typer.Option(help="Chunks to retrieve.")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the interaction id.")
    ] = False,
) -> None:
    """Ask a question; prints the answer, its sources and the interaction id as JSON."""
    from rag_loop.interactions.ask import ask

    result = ask(services(), question, top_k=top_k, client="cli")
    if quiet:
        typer.echo(result.interaction_id)
    else:
        emit(result.__dict__)


@app.command("feedback")
def feedback_command(
    interaction_id: Annotated[str, typer.Argument(help="The interaction to give feedback on.")],
    thumb: Annotated[str | None, typer.Option(help="up or down.")] = None,
    relevant: Annotated[
        list[str] | None, typer.Option(help="A shown chunk id that was relevant (repeatable).")
    ] = None,
    not_relevant: Annotated[
        list[str] | None, typer.Option(help="A shown chunk id that was not relevant (repeatable).")
    ] = None,
    correction: Annotated[str | None, typer.Option(help="A corrected answer.")] = None,
    source_document: Annotated[
        str | None, typer.Option(help="The document that holds the right answer.")
    ] = None,
    source_chunk: Annotated[
        str | None, typer.Option(help="The chunk that holds the right answer.")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="A free-text comment.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retries with the same key are recorded once.")
    ] = None,
) -> None:
    """Record feedback on an answer (as the local operator)."""
    from rag_loop.feedback.schemas import FeedbackIn
    from rag_loop.feedback.service import submit_feedback

    labels = [{"chunk_id": c, "relevant": True} for c in relevant or []]
    labels += [{"chunk_id": c, "relevant": False} for c in not_relevant or []]
    source = None
    if source_document or source_chunk:
        source = {"document_id": source_document, "chunk_id": source_chunk}
    try:
        body = FeedbackIn.model_validate(
            {
                "interaction_id": interaction_id,
                "thumb": thumb,
                "chunk_labels": labels,
                "correction": correction,
                "source": source,
                "comment": comment,
                "idempotency_key": idempotency_key,
            }
        )
    except ValidationError as exc:
        raise InvalidInput(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {problem(e)}" if e["loc"] else problem(e)
                for e in exc.errors()
            )
        ) from exc
    emit(submit_feedback(services(), body, actor=CLI_ACTOR).__dict__)


@corrections_app.command("list")
def corrections_list(
    status: Annotated[
        str, typer.Option(help="pending, approved, rejected, disputed or all.")
    ] = "pending",
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
) -> None:
    """List corrections waiting for review (or in another state)."""
    from rag_loop.feedback.corrections import list_corrections

    emit(list_corrections(services(), None if status == "all" else status, limit))


@corrections_app.command("show")
def corrections_show(
    correction_id: Annotated[int, typer.Argument(help="The correction id.")],
) -> None:
    """One correction: its answer's chunks, the proposed amendment and its diff, decisions."""
    from rag_loop.feedback.corrections import get_correction

    emit(get_correction(services(), correction_id))


@corrections_app.command("approve")
def corrections_approve(
    correction_id: Annotated[int, typer.Argument(help="The correction id.")],
    reviewer: Annotated[str, typer.Option(help="Who approves it.")] = CLI_ACTOR,
    note: Annotated[str | None, typer.Option(help="Why.")] = None,
    amend: Annotated[
        bool,
        typer.Option(
            "--amend",
            help="Amend the passage the answer came from instead of adding the text as new "
            "knowledge (by default the drafted amendment `corrections show` gives).",
        ),
    ] = False,
    chunk: Annotated[str | None, typer.Option(help="With --amend: the chunk id to amend.")] = None,
    text: Annotated[
        str | None, typer.Option(help="With --amend: the passage's amended text.")
    ] = None,
) -> None:
    """Approve a correction; with enough approvals (RAG_LOOP_REVIEW_APPROVALS) it serves at
    once, added as a document or, with --amend, in place of the passage it contradicts."""
    from rag_loop.feedback.corrections import approve, get_correction

    parts = services()
    if (chunk or text) and not amend:
        raise InvalidInput("--chunk and --text go with --amend")
    if amend and (chunk is None or text is None):
        drafted = get_correction(parts, correction_id)["proposal"] or {}
        chunk = chunk or drafted.get("chunk_id")
        text = text or drafted.get("text")
    emit(
        approve(
            parts,
            correction_id,
            reviewer=reviewer,
            note=note,
            mode="amend" if amend else None,
            chunk_id=chunk,
            text=text,
        )
    )


@corrections_app.command("reject")
def corrections_reject(
    correction_id: Annotated[int, typer.Argument(help="The correction id.")],
    reviewer: Annotated[str, typer.Option(help="Who rejects it.")] = CLI_ACTOR,
    note: Annotated[str | None, typer.Option(help="Why.")] = None,
) -> None:
    """Reject a correction: it never reaches the index (after an approval: it is disputed;
    the CLI, like an admin key, settles a dispute)."""
    from rag_loop.feedback.corrections import reject

    emit(reject(services(), correction_id, reviewer=reviewer, note=note))


@corrections_app.command("amendments")
def corrections_amendments(
    status: Annotated[
        str, typer.Option(help="active, flagged, reverted, replaced or all.")
    ] = "all",
) -> None:
    """Passages replaced by approved corrections (flagged: the source passage changed)."""
    from rag_loop.feedback.corrections import list_amendment_views

    emit(list_amendment_views(services(), None if status == "all" else status))


@corrections_app.command("revert")
def corrections_revert(
    amendment_id: Annotated[int, typer.Argument(help="The amendment id.")],
    actor: Annotated[str, typer.Option(help="Who reverts it.")] = CLI_ACTOR,
    note: Annotated[str | None, typer.Option(help="Why.")] = None,
) -> None:
    """Serve the passage's own text again (or dismiss a flagged amendment)."""
    from rag_loop.feedback.corrections import revert_amendment

    emit(revert_amendment(services(), amendment_id, actor=actor, note=note))


@corrections_app.command("reapply")
def corrections_reapply(
    amendment_id: Annotated[int, typer.Argument(help="The flagged amendment id.")],
    chunk: Annotated[str, typer.Option(help="The passage of the document that serves now.")],
    text: Annotated[str, typer.Option(help="Its amended text.")],
    actor: Annotated[str, typer.Option(help="Who applies it.")] = CLI_ACTOR,
) -> None:
    """Apply a flagged amendment to the passage that serves now."""
    from rag_loop.feedback.corrections import reapply_amendment

    emit(reapply_amendment(services(), amendment_id, chunk_id=chunk, text=text, actor=actor))


@interactions_app.command("show")
def interactions_show(
    interaction_id: Annotated[str, typer.Argument(help="The interaction id.")],
) -> None:
    """Everything about one answer: chunks and scores as served, versions, feedback."""
    from rag_loop.feedback.lineage import show

    emit(show(services().sessions, interaction_id))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[
        list[str], typer.Option(help="ask, feedback, review or admin (repeatable).")
    ] = DEFAULT_SCOPES,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    from rag_loop.auth.keys import create_key
    from rag_loop.db.engine import transaction

    svc = services()
    with transaction(svc.sessions) as session:
        key, secret = create_key(session, name, list(scope), actor=CLI_ACTOR)
        emit({"id": key.id, "name": key.name, "scopes": key.scopes, "key": secret})


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never their secrets)."""
    from rag_loop.auth.keys import list_keys

    with services().sessions() as session:
        emit(
            [
                {
                    "id": k.id,
                    "name": k.name,
                    "scopes": k.scopes,
                    "created_at": k.created_at,
                    "revoked_at": k.revoked_at,
                }
                for k in list_keys(session)
            ]
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id.")]) -> None:
    """Revoke an API key."""
    from rag_loop.auth.keys import revoke_key
    from rag_loop.db.engine import transaction

    with transaction(services().sessions) as session:
        key = revoke_key(session, key_id, actor=CLI_ACTOR)
        emit({"id": key.id, "revoked_at": key.revoked_at})


@export_app.command("feedback")
def export_feedback_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("export"),
    format: Annotated[
        list[str], typer.Option(help="jsonl and/or parquet (repeatable).")
    ] = DEFAULT_FORMATS,
    all_interactions: Annotated[
        bool, typer.Option("--all", help="Include interactions without feedback.")
    ] = False,
) -> None:
    """Write the feedback dataset (interaction, query, shown chunks, labels, corrections)."""
    from rag_loop.feedback.export import export_feedback

    emit(
        export_feedback(
            services().sessions, out, formats=tuple(format), include_all=all_interactions
        )
    )


@index_app.command("list")
def index_list() -> None:
    """List index versions and their aliases (`champion` serves)."""
    from rag_loop.index.versions import describe_versions

    with services().sessions() as session:
        emit(describe_versions(session))


@index_app.command("serve")
def index_serve(
    version_id: Annotated[
        int, typer.Argument(help="A ready index version (`rag-loop index list`).")
    ],
    reason: Annotated[str, typer.Option(help="Why (for the audit log).")] = "manual",
) -> None:
    """Serve this index version now: the way back to a serving state from anywhere (its
    collection is rebuilt first if Chroma lost it). What served becomes the rollback target."""
    from rag_loop.loop import cycle

    emit(cycle.serve_version(services(), version_id, actor=CLI_ACTOR, reason=reason))


@eval_app.command("run")
def eval_run(
    golden: Annotated[
        Path | None,
        typer.Option(help="A golden set (JSONL). Default: the first configured one."),
    ] = None,
    production: Annotated[
        bool, typer.Option("--production", help="Score recent answers as served instead.")
    ] = False,
    window: Annotated[
        int | None, typer.Option(help="--production: how many recent answers.", min=1)
    ] = None,
    index_version: Annotated[
        int | None, typer.Option(help="Golden: the index version to score (default: champion).")
    ] = None,
    judge: Annotated[
        bool, typer.Option("--judge/--no-judge", help="Use the configured judge, if any.")
    ] = True,
    limit: Annotated[
        int | None, typer.Option(help="Golden: only the first N questions.", min=1)
    ] = None,
) -> None:
    """Run an evaluation now; prints its metrics and failures. Judge: RAG_LOOP_EVALUATION_*."""
    from rag_loop.evaluation import service

    if production and golden is not None:
        raise InvalidInput("give --golden or --production, not both")
    svc = services()
    run_id = service.run(
        svc,
        source="production" if production else "golden",
        path=golden,
        window=window,
        index_version=index_version,
        use_judge=judge,
        limit=limit,
        trigger="cli",
    )
    view = service.get(svc, run_id)
    view.pop("samples")
    emit(view)


@eval_app.command("list")
def eval_list(
    limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 20,
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
) -> None:
    """List evaluation runs, newest first."""
    from rag_loop.evaluation import service

    emit(service.list_runs(services(), limit, dataset))


@eval_app.command("show")
def eval_show(run_id: Annotated[str, typer.Argument(help="The evaluation run id.")]) -> None:
    """One run with every sample's scores and judge failures."""
    from rag_loop.evaluation import service

    emit(service.get(services(), run_id))


@eval_app.command("compare")
def eval_compare(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
) -> None:
    """The latest run per dataset and index version, side by side."""
    from rag_loop.evaluation import service

    emit(service.compare(services(), dataset))


@drift_app.command("check")
def drift_check() -> None:
    """Compare the latest queries, thumbs and evaluations with the ones before them."""
    from rag_loop.evaluation import service

    emit(service.drift(services(), actor=CLI_ACTOR))


@events_app.command("list")
def events_list(
    kind: Annotated[str, typer.Option(help="Event kind.")] = "drift",
    after: Annotated[int, typer.Option(help="Only events after this id.", min=0)] = 0,
) -> None:
    """Events of a kind, oldest first."""
    from rag_loop.evaluation import service

    emit(service.events(services(), kind, after))


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
        "report.html"
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON summary here.")
    ] = None,
) -> None:
    """Write the evaluation report (HTML with plots, no network needed to view it)."""
    from rag_loop.evaluation import service
    from rag_loop.evaluation.report import REPORT_CYCLES
    from rag_loop.loop.cycle import list_cycles

    wired = services()
    summary = service.summary(wired, list_cycles(wired, REPORT_CYCLES))
    files = {"html": (out, service.html(summary))}
    if json_out is not None:
        files["json"] = (json_out, json.dumps(summary, indent=1, default=str))
    emit(write_files(files))


def write_files(files: dict[str, tuple[Path, str]]) -> dict[str, str]:
    """Write each (path, text), all or none; a path that cannot be written is bad input."""
    for path, _ in files.values():
        if path.is_dir():
            raise InvalidInput(f"cannot write {path}: it is a folder; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        write_texts_whole(dict(files.values()))
    except OSError as exc:
        raise InvalidInput(f"cannot write {exc.filename}: {exc.strerror or exc}") from exc
    return {kind: str(path) for kind, (path, _) in files.items()}


@demo_app.command("replay")
def demo_replay(
    questions: Annotated[
        Path, typer.Argument(help="Questions with document_ids (the golden-set format).")
    ],
    user: Annotated[
        str | None,
        typer.Option(
            help="A preset simulated user, generous or realistic (the loop benchmark's); "
            "the options below then do not apply."
        ),
    ] = None,
    noise: Annotated[
        float, typer.Option(help="Share of judgements flipped.", min=0.0, max=1.0)
    ] = 0.0,
    pointer_share: Annotated[
        float, typer.Option(help="Share of misses answered with a pointer.", min=0.0, max=1.0)
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seeds the simulated user.")] = 0,
    label_depth: Annotated[
        int, typer.Option(help="Shown chunks labelled per answer (the first ones).", min=1)
    ] = 10,
) -> None:
    """Ask every question and send a simulated user's feedback (labels on the shown chunks
    from the file's document_ids, a thumb, pointers), through the real service."""
    from rag_loop.evaluation.replay import replay
    from rag_loop.feedback.simulated import SimulatedUser

    if user is not None:
        try:
            simulated = SimulatedUser.preset(user, seed)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
    else:
        simulated = SimulatedUser(
            seed=seed, label_noise=noise, pointer_share=pointer_share, label_depth=label_depth
        )
    asked = replay(services(), questions, simulated, actor="cli-demo")
    emit({"asked": asked, "user": simulated.name, "feedback": simulated.counts})


CycleId = Annotated[int, typer.Argument(help="The loop cycle id (`rag-loop loop list`).")]


@loop_app.command("run")
def loop_run() -> None:
    """Start a cycle now and run it: training set, fine-tune, candidate index, gate, then
    promotion, shadow mode, approval or rejection. Prints the cycle."""
    from rag_loop.loop import cycle

    svc = services()
    cycle_id = cycle.start_cycle(svc, trigger="manual", actor="cli")
    emit(cycle.run_cycle(svc, cycle_id, actor="cli"))


@loop_app.command("list")
def loop_list(limit: Annotated[int, typer.Option(help="At most this many.", min=1)] = 20) -> None:
    """Loop cycles, newest first, with their state."""
    from rag_loop.loop import cycle

    emit(
        [
            {k: c[k] for k in ("id", "state", "trigger", "created_at", "error", "decided_by")}
            for c in cycle.list_cycles(services(), limit)
        ]
    )


@loop_app.command("show")
def loop_show(cycle_id: CycleId) -> None:
    """One cycle: training set, model, candidate index, gate numbers, stage times."""
    from rag_loop.loop import cycle

    emit(cycle.cycle_view(services(), cycle_id))


@loop_app.command("resume")
def loop_resume(
    cycle_id: CycleId,
    force: Annotated[
        bool,
        typer.Option(help="Take over a cycle whose process is gone (after a crash)."),
    ] = False,
) -> None:
    """Go on with a cycle that failed or was cut off, from the step it was in."""
    from rag_loop.loop import cycle

    emit(cycle.resume(services(), cycle_id, actor="cli", force=force))


@loop_app.command("approve")
def loop_approve(
    cycle_id: CycleId,
    reviewer: Annotated[str, typer.Option(help="Who approves (for the audit log).")] = "cli",
) -> None:
    """Promote a cycle that is awaiting approval."""
    from rag_loop.loop import cycle

    emit(cycle.approve(services(), cycle_id, actor=reviewer))


@loop_app.command("reject")
def loop_reject(
    cycle_id: CycleId,
    reason: Annotated[str, typer.Option(help="Why (for the audit log).")] = "",
    reviewer: Annotated[str, typer.Option(help="Who rejects.")] = "cli",
) -> None:
    """Reject an active or failed cycle; its candidate index is dropped."""
    from rag_loop.loop import cycle

    emit(cycle.reject(services(), cycle_id, actor=reviewer, reason=reason))


@loop_app.command("rollback")
def loop_rollback(
    cycle_id: Annotated[
        int | None, typer.Option("--cycle", help="Default: the latest promoted cycle.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (for the audit log).")] = "manual",
) -> None:
    """Serve the index that served before the latest promotion again, at once."""
    from rag_loop.loop import cycle

    emit(cycle.rollback(services(), actor="cli", reason=reason, cycle_id=cycle_id))


@loop_app.command("tick")
def loop_tick() -> None:
    """One look at the loop, as the scheduler does: advance a cycle in shadow mode, watch
    the latest promotion (rolling it back if live metrics regressed), start a cycle when a
    trigger fires."""
    from rag_loop.loop.triggers import tick

    emit(tick(services()))


@loop_app.command("trace")
def loop_trace(
    interaction_id: Annotated[str, typer.Argument(help="An interaction id from `ask`.")],
) -> None:
    """The audit walk: answer -> index version -> embedder -> training set -> feedback ->
    the cycle and evaluations that promoted it."""
    from rag_loop.loop.audit import trace

    emit(trace(services().sessions, interaction_id))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (also done automatically on start)."""
    from rag_loop.db.engine import create_db_engine, upgrade

    config = settings()
    engine = create_db_engine(config.database_url)
    upgrade(engine)
    engine.dispose()
    typer.echo("database is at the newest schema")


def main() -> None:
    try:
        app()
    except RagLoopError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        for detail in exc.details:
            typer.echo(f"  {json.dumps(detail, default=str)}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # what the system refused that no command foresaw: a line, no traceback
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
