"""The judge: an LLM behind LangChain that Ragas' metrics call for structured verdicts.

Ragas 0.4's metric collections talk to an `InstructorBaseRagasLLM` (prompt + a Pydantic
response model -> an instance of that model). `LangChainJudge` implements that protocol on
any LangChain chat model, so the judge can be any OpenAI-compatible server (vLLM, Ollama,
llama_cpp.server, OpenAI) or SmolLM2 in-process through llama.cpp:

    prompt (+ the JSON schema) -> chat model -> text -> the JSON object in it -> model

Where the server can, the output is constrained to the schema (`judge.response_format`:
OpenAI-style `json_schema`, or llama.cpp's `json_object` with a schema, which compiles it
to a grammar); either way the answer is validated against the schema here.

Every way a judge call can go wrong becomes a `JudgeFailure` with a `kind` (`timeout`,
`unparsable`, `unavailable`, `error`), which the evaluation counts per metric; a failure is
never turned into a score. `RagasEmbeddings` gives Ragas our sentence-transformers embedder.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ragas.embeddings.base import BaseRagasEmbedding
from ragas.llms.base import InstructorBaseRagasLLM

from rag_loop.errors import BackendUnavailable
from rag_loop.generation.chat_models import make_chat_model
from rag_loop.index.embedders import Embedder
from rag_loop.settings import JudgeSettings

T = TypeVar("T", bound=BaseModel)

JSON_INSTRUCTION = (
    "\n\nAnswer with one JSON object only, no prose, matching this JSON schema:\n{schema}"
)


class JudgeFailure(Exception):
    """One judge call that produced no usable verdict."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # timeout | unparsable | unavailable | error


def extract_json(text: str) -> Any:
    """The first JSON object or array in `text` (models like to wrap it in prose or ```)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        return value
    raise ValueError("no JSON object in the judge's output")


class LangChainJudge(InstructorBaseRagasLLM):
    """Ragas' structured-output LLM protocol on a LangChain chat model."""

    def __init__(
        self,
        name: str,
        chat_model: Any,
        *,
        timeout_seconds: float,
        max_concurrency: int | None = None,
        response_format: str = "none",
    ) -> None:
        self.name = name
        self.chat_model = chat_model
        self.timeout_seconds = timeout_seconds
        self.max_concurrency = max_concurrency
        self.response_format = response_format

    def _constrained(self, response_model: type[BaseModel]) -> Any:
        schema = response_model.model_json_schema()
        if self.response_format == "json_schema":
            return self.chat_model.bind(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": response_model.__name__, "schema": schema},
                }
            )
        if self.response_format == "json_object":
            return self.chat_model.bind(response_format={"type": "json_object", "schema": schema})
        return self.chat_model

    def generate(self, prompt: str, response_model: type[T]) -> T:
        return asyncio.run(self.agenerate(prompt, response_model))

    async def agenerate(self, prompt: str, response_model: type[T]) -> T:
        schema = json.dumps(response_model.model_json_schema())
        full_prompt = prompt + JSON_INSTRUCTION.format(schema=schema)
        try:
            message = await asyncio.wait_for(
                self._constrained(response_model).ainvoke(full_prompt),
                timeout=self.timeout_seconds,
            )
        except TimeoutError as exc:
            raise JudgeFailure(
                "timeout", f"the judge took longer than {self.timeout_seconds:g} s"
            ) from exc
        except Exception as exc:
            raise _classify(exc) from exc
        text = message.content if isinstance(message.content, str) else str(message.content)
        try:
            return response_model.model_validate(extract_json(text))
        except (ValueError, ValidationError) as exc:
            snippet = text.strip().replace("\n", " ")[:160]
            raise JudgeFailure("unparsable", f"unusable judge output {snippet!r}: {exc}") from exc

    def ping(self) -> None:
        """One tiny call: a judge that cannot be reached fails the run before it starts.

        Synchronous on purpose: an async client's pooled connections belong to the event
        loop that opened them, and the scoring runs in another one."""
        try:
            self.chat_model.bind(max_tokens=4).invoke("Say OK.")
        except Exception as exc:
            failure = _classify(exc)
            raise BackendUnavailable(f"the judge {self.name} is unusable: {failure}") from exc


def _classify(exc: Exception) -> JudgeFailure:
    import openai

    if isinstance(exc, JudgeFailure):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return JudgeFailure("timeout", f"the judge timed out: {exc}")
    if isinstance(exc, openai.APIConnectionError | ConnectionError):
        return JudgeFailure("unavailable", f"the judge cannot be reached: {exc}")
    if isinstance(exc, openai.APIStatusError):
        return JudgeFailure("error", f"the judge answered HTTP {exc.status_code}: {exc}"[:500])
    return JudgeFailure("error", f"{type(exc).__name__}: {exc}"[:500])


def make_judge(judge: JudgeSettings) -> LangChainJudge | None:
    """The configured judge, or None (backend `none`: non-LLM metrics only); its chat model
    comes from the same factory as the generator's."""
    if judge.backend == "none":
        return None
    built = make_chat_model("judge", judge, "RAG_LOOP_JUDGE_")
    if built.in_process:
        # one llama.cpp model in this process: it must not run two calls at once, and
        # llama.cpp turns Ragas' schema into a grammar
        return LangChainJudge(
            built.name,
            built.model,
            timeout_seconds=judge.timeout_seconds,
            max_concurrency=1,
            response_format="json_object",
        )
    return LangChainJudge(
        built.name,
        built.model,
        timeout_seconds=judge.timeout_seconds,
        response_format=judge.response_format,
    )


class RagasEmbeddings(BaseRagasEmbedding):
    """Ragas' embedding protocol on our embedder (response relevancy compares questions)."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder

    def embed_text(self, text: str, **kwargs: Any) -> list[float]:
        return [float(x) for x in self.embedder.embed_query(text)]

    async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
        return await asyncio.to_thread(self.embed_text, text)

    def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.embedder.embed_documents(list(texts))]

    async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_texts, texts)
