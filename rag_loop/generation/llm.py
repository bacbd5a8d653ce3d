"""LLM backends through LangChain: any OpenAI-compatible server, or SmolLM2 via llama.cpp."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.output_parsers import StrOutputParser

from rag_loop.errors import BackendUnavailable, UpstreamError
from rag_loop.generation.base import Generation, cited_ranks
from rag_loop.generation.chat_models import make_chat_model
from rag_loop.generation.prompts import ANSWER_PROMPT_VERSION, answer_prompt, format_sources
from rag_loop.hits import Hit
from rag_loop.settings import GeneratorSettings


class ChatGenerator:
    """prompt | chat model | text, with provider errors mapped to ours."""

    def __init__(self, name: str, chat_model: Any) -> None:
        self.name = name
        self.prompt_version = ANSWER_PROMPT_VERSION
        self.chain = answer_prompt() | chat_model | StrOutputParser()

    def generate(self, question: str, sources: Sequence[Hit]) -> Generation:
        try:
            text = self.chain.invoke({"question": question, "sources": format_sources(sources)})
        except Exception as exc:
            raise _map_provider_error(self.name, exc) from exc
        text = text.strip()
        if not text:
            raise UpstreamError(f"the generator {self.name} returned an empty answer")
        return Generation(text=text, cited_ranks=cited_ranks(text, len(sources)))

    def stream(self, question: str, sources: Sequence[Hit]) -> Iterator[str]:
        """The answer as the model writes it (the chat route streams it to the client)."""
        try:
            yield from self.chain.stream({"question": question, "sources": format_sources(sources)})
        except Exception as exc:
            raise _map_provider_error(self.name, exc) from exc


def _map_provider_error(name: str, exc: Exception) -> Exception:
    import openai

    if isinstance(exc, openai.APIConnectionError | openai.APITimeoutError | ConnectionError):
        return BackendUnavailable(f"the generator {name} cannot be reached: {exc}")
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError(f"the generator {name} answered HTTP {exc.status_code}: {exc}")
    return UpstreamError(f"the generator {name} failed: {type(exc).__name__}: {exc}")


def chat_generator(settings: GeneratorSettings) -> ChatGenerator:
    """The `openai` or `llamacpp` generator: its chat model from the one factory."""
    assert settings.backend in ("openai", "llamacpp")
    built = make_chat_model("generator", settings, "RAG_LOOP_GENERATOR_")
    return ChatGenerator(built.name, built.model)
