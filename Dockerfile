# rag-loop: the API (`rag-loop serve`), workers (`rag-loop worker`) and, in the compose
# stack, the MLflow tracking server (this image has mlflow and the PostgreSQL driver).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    RAG_LOOP_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, pinned to the CPU build: anything else pulls gigabytes of CUDA packages
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY rag_loop ./rag_loop
COPY corpora ./corpora
# EXTRAS=llamacpp adds the local SmolLM2 generator/judge (llama.cpp builds for ~4 minutes),
# built for any x86-64 with AVX2, not for the build host's CPU (see the Makefile)
ARG EXTRAS=""
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

RUN useradd --create-home --uid 1000 rag && mkdir -p /data && chown rag /data
USER rag
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["rag-loop", "serve", "--host", "0.0.0.0", "--port", "8000"]
