"""Ingestion: idempotent re-ingest, document change and delete, loaders, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from rag_loop.corpus.ingest import ingest
from rag_loop.corpus.loaders import load_path
from rag_loop.db.models import Chunk, Document, IndexVersion
from rag_loop.errors import InvalidInput
from rag_loop.index.versions import champion
from rag_loop.interactions.ask import ask
from rag_loop.services import Services
from tests.conftest import CORPUS, row_counts


@pytest.fixture
def corpus_copy(tmp_path: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(CORPUS, target)
    return target


def test_reingesting_unchanged_files_changes_nothing(services: Services, corpus_copy: Path) -> None:
    first = ingest(services, corpus_copy)
    assert first.changed and first.documents_added == 47 and first.chunks_embedded > 0
    before = row_counts(services)
    second = ingest(services, corpus_copy)
    assert not second.changed
    assert second.index_version_id == first.index_version_id
    assert row_counts(services) == before
    assert len(services.store.client.list_collections()) == 1


def test_changed_document_gets_new_chunk_version(services: Services, corpus_copy: Path) -> None:
    first = ingest(services, corpus_copy)
    page = corpus_copy / "bike" / "lights.md"
    page.write_text(page.read_text().replace("70 lux", "90 lux"))
    second = ingest(services, corpus_copy)
    assert second.changed and second.documents_updated == 1 and second.documents_added == 0
    assert second.chunks_embedded == 1  # only the changed document is embedded again
    assert second.chunks_reused == second.chunks_total - 1
    with services.sessions() as session:
        doc = session.get_one(Document, "bike/lights")
        assert doc.version == 2
        chunks = session.scalars(select(Chunk).where(Chunk.document_id == "bike/lights")).all()
        assert sorted((c.document_version, c.superseded_at is None) for c in chunks) == [
            (1, False),
            (2, True),
        ]
        assert champion(session).id == second.index_version_id
        parent = session.get_one(IndexVersion, second.index_version_id).parent_id
        assert parent == first.index_version_id
    answer = ask(services, "How bright is the front light?")
    assert "90 lux" in answer.answer and "70 lux" not in answer.answer
    # the old version's collection stays for rollback
    assert services.store.count(str(first.collection_name)) == first.chunks_total


def test_removed_document_is_tombstoned_and_leaves_the_index(
    services: Services, corpus_copy: Path
) -> None:
    ingest(services, corpus_copy)
    (corpus_copy / "bike" / "gears.md").unlink()
    result = ingest(services, corpus_copy)
    assert result.documents_deleted == 1 and result.chunks_embedded == 0
    with services.sessions() as session:
        doc = session.get_one(Document, "bike/gears")
        assert doc.deleted_at is not None
        ids = set(session.scalars(select(Chunk.id).where(Chunk.document_id == "bike/gears")))
    assert ids and not ids & services.store.ids(str(result.collection_name))
    answer = ask(services, "How many gears does the Model C1 have?", top_k=10)
    assert "bike/gears" not in [s["document_id"] for s in answer.sources]
    # and it comes back as a new version when restored
    (corpus_copy / "bike" / "gears.md").write_text("# Gears\n\nNow with 8 gears.\n")
    restored = ingest(services, corpus_copy)
    assert restored.documents_added == 1
    with services.sessions() as session:
        doc = session.get_one(Document, "bike/gears")
        assert doc.deleted_at is None and doc.version == 2


def test_chunking_config_is_recorded_and_a_change_rechunks(
    make_settings,
    embedder,  # type: ignore[no-untyped-def]
    corpus_copy: Path,
) -> None:
    svc = Services.from_settings(make_settings(), embedder=embedder)
    first = ingest(svc, corpus_copy)
    svc.close()
    small = Services.from_settings(
        make_settings(chunking={"chunk_size": 200, "chunk_overlap": 20}), embedder=embedder
    )
    try:
        second = ingest(small, corpus_copy)
        assert second.changed and second.chunks_total > first.chunks_total
        with small.sessions() as session:
            version = champion(session)
            assert (version.chunk_size, version.chunk_overlap) == (200, 20)
        run = small.tracker.get_run(str(version.mlflow_run_id))
        assert run.data.params["chunking.chunk_size"] == "200"
        assert run.data.metrics["n_chunks"] == second.chunks_total
    finally:
        small.close()


def test_loaders_read_jsonl_beir_and_text(tmp_path: Path) -> None:
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(
        json.dumps({"_id": "4983", "title": "Microstructural development", "text": "Alterations"})
        + "\n\n"
        + json.dumps({"_id": "5836", "title": "Induction", "text": "Myelodysplastic"})
        + "\n"
    )
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "q"}) + "\n")
    root, docs = load_path(beir)
    assert root == str(beir.resolve())
    assert [(d.id, d.title) for d in docs] == [
        ("4983", "Microstructural development"),
        ("5836", "Induction"),
    ]
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "sub" / "note.txt").write_text("Plain text body.")
    (plain / "page.md").write_text("# A Title\n\nBody text.")
    bom = "\ufeff"  # a byte-order mark, as some editors on Windows write: not part of the text
    (plain / "more.jsonl").write_text(bom + json.dumps({"id": "x1", "text": "from jsonl"}) + "\n")
    (plain / "marked.md").write_text(bom + "# Marked\n\nWith a mark.")
    (plain / ".hidden.md").write_text("# Hidden")
    _, docs = load_path(plain)
    assert sorted((d.id, d.title, d.text) for d in docs) == [
        ("marked", "Marked", "With a mark."),
        ("page", "A Title", "Body text."),
        ("sub/note", "note", "Plain text body."),
        ("x1", "", "from jsonl"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", "{not json}\n", "bad.jsonl:1 is not valid JSON"),
        ("noid.jsonl", json.dumps({"text": "t"}) + "\n", "needs an id"),
        ("list.jsonl", "[1, 2]\n", "must be a JSON object"),
        (
            "dup.jsonl",
            json.dumps({"id": "a", "text": "t"})
            + "\n"
            + json.dumps({"id": "a", "text": "u"})
            + "\n",
            "appears twice",
        ),
        ("doc.pdf", "%PDF", "unsupported type"),
        ("latin.txt", b"caf\xe9", "is not UTF-8"),
        (
            "latin.jsonl",
            b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n',
            r"latin\.jsonl:2 is not UTF-8",
        ),
    ],
)
def test_bad_input_files_are_refused_and_write_nothing(
    services: Services, tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = row_counts(services)
    with pytest.raises(InvalidInput, match=message):
        ingest(services, path)
    assert row_counts(services) == before


def test_missing_and_empty_paths(services: Services, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        ingest(services, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no documents found"):
        ingest(services, tmp_path / "empty")
    assert row_counts(services)["documents"] == 0
