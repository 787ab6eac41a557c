"""A GenerationEngine with exact, configurable timing and a known output, for driving the OpenAI server in tests.

Tokens are words: `encode` splits on whitespace, a decoder joins words with single spaces, so text round-trips for
words in the vocabulary. A word ending in "@@" is the first part of a longer word (BPE style): its decoder returns ''
and carries the piece into the next token's text, the way a real detokeniser holds back an incomplete character.

Each sequence's output is fixed by its prompt (`continuation`), so a test knows the exact text to expect. Each
step sleeps `step_ms` plus `prefill_ms_per_token` x the prompt tokens of the sequences added since the last step,
then emits one token per active sequence; `step_batch_sizes` records how many sequences each step served.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from advisor.llm.engine_api import GenerationRequest, TokenEvent

EOS = "<eos>"
UNK = "<unk>"
DEFAULT_VOCAB = (
    EOS, UNK, "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "un@@", "believ@@", "able", "and",
    "then", "sleeps", "in", "sun", "hello", "world", "a", "small", "model", "speaks",
)


class ScriptedEngineFailure(RuntimeError):
    """Raised inside step() number fail_on_step."""


class WordDecoder:
    """Incremental word-per-token detokenisation; '' for the end-of-sequence token and incomplete "@@" pieces."""

    def __init__(self, vocab: tuple[str, ...]):
        self._vocab = vocab
        self._pending = ""
        self._started = False

    def add(self, token_id: int) -> str:
        word = self._vocab[token_id]
        if word == EOS:
            return ""
        if word.endswith("@@"):
            self._pending += word[:-2]
            return ""
        text = ("" if not self._started else " ") + self._pending + word
        self._pending, self._started = "", True
        return text


@dataclass
class _Sequence:
    request: GenerationRequest
    generated: int = 0


@dataclass
class ScriptedEngine:
    max_batch_size: int = 4
    prefill_ms_per_token: float = 0.05
    step_ms: float = 10.0
    eos_after: int | None = None  # the end-of-sequence token follows this many content tokens (unless ignore_eos)
    vocab: tuple[str, ...] = DEFAULT_VOCAB
    fail_on_step: int | None = None  # the 1-based step() call that raises ScriptedEngineFailure
    max_context: int = 256
    name: str = "scripted"
    version: str = "1"
    model_name: str = "scripted-test-model"
    step_batch_sizes: list[int] = field(default_factory=list)  # sequences served by each step, in order
    cancelled_ids: list[int] = field(default_factory=list)

    def __post_init__(self):
        if EOS not in self.vocab or UNK not in self.vocab:
            raise ValueError(f"the vocabulary needs {EOS} and {UNK}")
        self._ids = {word: index for index, word in enumerate(self.vocab)}
        self._content_ids = [i for i, word in enumerate(self.vocab) if word not in (EOS, UNK)]
        self._sequences: dict[int, _Sequence] = {}
        self._unprefilled_tokens = 0
        self._next_id = 1
        self._steps = 0
        self._lock = threading.Lock()  # guards the records a test reads while the server's scheduler writes them

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(word, self._ids[UNK]) for word in text.split()]

    def new_decoder(self) -> WordDecoder:
        return WordDecoder(self.vocab)

    def decode(self, token_ids: list[int]) -> str:
        decoder = self.new_decoder()
        return "".join(decoder.add(token_id) for token_id in token_ids)

    def chat_prompt(self, messages: list[dict]) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def continuation(self, prompt_ids: list[int] | tuple[int, ...], count: int, ignore_eos: bool = False) -> list[int]:
        """The tokens a sequence with this prompt generates, `count` at most (fewer when it stops at EOS)."""
        tokens = []
        for position in range(count):
            tokens.append(self._token_at(prompt_ids, position, ignore_eos))
            if tokens[-1] == self.eos_id:
                break
        return tokens

    def _token_at(self, prompt_ids, position: int, ignore_eos: bool) -> int:
        if self.eos_after is not None and position == self.eos_after and not ignore_eos:
            return self.eos_id
        return self._content_ids[(sum(prompt_ids) + position) % len(self._content_ids)]

    def add(self, request: GenerationRequest) -> int:
        if len(self._sequences) >= self.max_batch_size:
            raise RuntimeError(f"add() with {len(self._sequences)} active, max_batch_size {self.max_batch_size}")
        if len(request.prompt_ids) + request.max_new_tokens > self.max_context:
            raise ValueError(f"prompt + max_new_tokens over the context of {self.max_context}")
        if any(not 0 <= token < len(self.vocab) for token in request.prompt_ids):
            raise ValueError("a prompt token id is outside the vocabulary")
        sequence_id, self._next_id = self._next_id, self._next_id + 1
        self._sequences[sequence_id] = _Sequence(request)
        self._unprefilled_tokens += len(request.prompt_ids)
        return sequence_id

    def step(self) -> list[TokenEvent]:
        if not self._sequences:
            return []
        self._steps += 1
        time.sleep((self.step_ms + self.prefill_ms_per_token * self._unprefilled_tokens) / 1000)
        self._unprefilled_tokens = 0
        if self._steps == self.fail_on_step:
            raise ScriptedEngineFailure(f"scripted failure in step {self._steps}")
        with self._lock:
            self.step_batch_sizes.append(len(self._sequences))
        events = []
        for sequence_id, sequence in list(self._sequences.items()):
            request = sequence.request
            token = self._token_at(request.prompt_ids, sequence.generated, request.ignore_eos)
            sequence.generated += 1
            if token == self.eos_id:
                reason = "stop"
            elif sequence.generated >= request.max_new_tokens:
                reason = "length"
            else:
                reason = None
            if reason:
                del self._sequences[sequence_id]
            events.append(TokenEvent(sequence_id, token, finished=reason is not None, finish_reason=reason))
        return events

    def cancel(self, sequence_id: int) -> None:
        if self._sequences.pop(sequence_id, None) is not None:
            with self._lock:
                self.cancelled_ids.append(sequence_id)

    @property
    def active(self) -> int:
        return len(self._sequences)

    def close(self) -> None:
        self._sequences.clear()
