"""The contract between a generation engine and what drives it: the OpenAI-compatible server
(advisor.llm.server) and the local measurement (advisor.llm.measure_local).

An engine runs a set of active sequences one step at a time: each `step()` computes one forward pass over every
active sequence (a new sequence's prompt, or a chunk of it, then one new token per running sequence) and returns
the tokens it produced. Continuous batching is the engine's business: `add` may be called between any two steps,
and `max_batch_size` says how many sequences one step serves (1: one at a time, the driver queues the rest).

Threading: `add`, `step` and `cancel` are called from one thread only (the driver's scheduler); `encode`,
`new_decoder` and `chat_prompt` may be called from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks), the end-of-sequence token ignored

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("a generation request needs at least one prompt token")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class TokenEvent:
    sequence_id: int
    token_id: int
    finished: bool  # the sequence's last token: it left the engine
    finish_reason: FinishReason | None = None  # "stop": end-of-sequence token; "length": max_new_tokens reached


class TextDecoder(Protocol):
    """Incremental detokenisation of one sequence: the text each new token adds ('' while a multi-byte
    character or a merged piece is incomplete)."""

    def add(self, token_id: int) -> str: ...


class GenerationEngine(Protocol):
    name: str  # the engine, e.g. "onnxruntime-genai"
    version: str
    model_name: str  # what /v1/models lists
    max_batch_size: int  # sequences one step serves at most
    max_context: int  # prompt + generated tokens of one sequence at most

    def encode(self, text: str) -> list[int]: ...

    def new_decoder(self) -> TextDecoder: ...

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text for chat messages ([{"role": ..., "content": ...}]): the model's chat template where it
        has one, else a plain transcript ending with the assistant's turn."""
        ...

    def add(self, request: GenerationRequest) -> int:
        """Admit a sequence (at most max_batch_size active); returns its id. Its prompt runs in the next step()."""
        ...

    def step(self) -> list[TokenEvent]:
        """One forward pass over the active sequences; blocks while it computes. [] when none is active."""
        ...

    def cancel(self, sequence_id: int) -> None:
        """Drop a sequence (its client went away); unknown or finished ids are ignored."""
        ...

    @property
    def active(self) -> int:
        """Sequences admitted and not finished."""
        ...

    def close(self) -> None: ...
