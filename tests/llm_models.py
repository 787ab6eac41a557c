"""Tiny generative models for the LLM engine tests: a random-initialised llama with its tokenizer
(advisor.llm.tiny_model), made once per session, and its ONNX Runtime GenAI builds (fp32 and int4), built once per
session, in parallel. Every fixture skips with the engine's own reason when onnxruntime-genai, its builder's
dependencies, torch or transformers are missing.

Use them with `pytest_plugins = ["llm_models"]` in a test module: registered as a plugin, the session fixtures are
shared by every module that asks (importing them into two modules would build twice).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from advisor.llm.engine import BuiltModel, build_genai_model, genai_unavailable
from advisor.llm.tiny_model import make_tiny_model

BUILD_TIMEOUT_S = 300  # ~10 s each on 2 idle cores; the machine may be shared


def _require_genai() -> None:
    reason = genai_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="session")
def tiny_llama(llm_dir) -> Path:
    """The Hugging Face folder: llama, 2 layers, hidden 128, vocabulary 512, seed 0."""
    _require_genai()
    return make_tiny_model(llm_dir / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_other_weights(llm_dir) -> Path:
    """The same architecture and tokenizer with seed 1's weights: a model the seed-0 builds must not match."""
    _require_genai()
    return make_tiny_model(llm_dir / "tiny-llama-seed1", seed=1)


@pytest.fixture(scope="session")
def tiny_llama_builds(tiny_llama, llm_dir) -> dict[str, BuiltModel]:
    """{"fp32": ..., "int4-wo": ...}: both builds at once (each is one builder subprocess)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {precision: pool.submit(build_genai_model, tiny_llama, llm_dir / f"tiny-llama-{precision}",
                                          precision, timeout_s=BUILD_TIMEOUT_S)
                   for precision in ("fp32", "int4-wo")}
        return {precision: future.result() for precision, future in futures.items()}


@pytest.fixture(scope="session")
def tiny_llama_fp32(tiny_llama_builds) -> BuiltModel:
    return tiny_llama_builds["fp32"]


@pytest.fixture(scope="session")
def tiny_llama_int4(tiny_llama_builds) -> BuiltModel:
    return tiny_llama_builds["int4-wo"]
