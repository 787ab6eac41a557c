"""A real generation engine on this CPU: ONNX Runtime GenAI (PyPI onnxruntime-genai 0.18.0) over a model its builder
converted from a Hugging Face folder.

Building: `python -m onnxruntime_genai.models.builder -i HF -o OUT -p fp32|int4|int8 -e cpu` in a subprocess, offline.
On CPU the builder offers fp32, int4 and int8 weights (its own list of valid combinations: "FP32 CPU, INT8 CPU, INT4
CPU"); int4/int8 are MatMulNBits weights in symmetric blocks of 32 with accuracy_level 4 (activations quantised to
int8 for the dot products). Embeddings, norms and the KV cache stay fp32 at every precision.

Serving: one og.Generator per sequence, not og.Engine. What 0.18.0's og.Engine does on CPU (checked on the tiny
models, 2026-12): it runs, but with its StaticBatchScheduler only. Dynamic (continuous) batching needs PagedAttention,
which the builder offers for CUDA fp16/bf16 only (an `engine.dynamic_batching` config on a CPU build fails with
"Paged cache input must have rank four"). The static scheduler forms a batch of at most 4 requests (whatever
`engine.static_batching.max_batch_size` says; get_capabilities() reports the configured value but batches stay at 4)
and a request added while a batch runs waits until every sequence of that batch has finished. That breaks this
interface's contract (a sequence added now runs its prompt in the next step) and makes one long request block all
others, so each sequence gets its own og.Generator and `step()` drives them in turn.

What one `step()` computes: for every active sequence, in admission order, one forward pass at batch 1 -- a new
sequence's whole prompt (og `append_tokens`, the prefill) followed by picking its first token, or for a running
sequence the pass over its previous token followed by picking the next one (og `generate_next_token`). Every active
sequence gets exactly one token per step, so a step's time is the sum of its sequences' passes: `max_batch_size` is
how many sequences the engine interleaves, not a batched forward pass (the local measurement times batched passes
separately, advisor.llm.measure_local).

Decoding is greedy (the argmax). `ignore_eos` is og's min_length: the end-of-sequence logit is masked until
max_new_tokens tokens exist, so the sequence runs to its length (vLLM's min_tokens does the same).

Tokens: encode and decode go through the folder's tokenizer.json with Hugging Face `tokenizers` (thread-safe, and
exactly what transformers uses, so the reference check compares like with like); og's own decode truncates at the
first invalid UTF-8 byte, which random tiny models produce all the time. The chat template is og's.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from advisor.errors import UserError
from advisor.llm.engine_api import GenerationRequest, TokenEvent

ENGINE_NAME = "onnxruntime-genai"
INSTALL_HINT = "pip install 'advisor[llm]'"
# advisor precision -> the builder's -p on CPU (the builder prints its valid pairs: FP32/INT8/INT4 CPU)
BUILDER_PRECISIONS = {"fp32": "fp32", "int4-wo": "int4", "int8-wo": "int8"}
RUNTIME_MODULES = ("onnxruntime_genai", "tokenizers")  # serving a built folder
BUILD_MODULES = ("onnx_ir", "onnxscript", "torch", "transformers")  # the builder and the reference
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
DEFAULT_MAX_BATCH_SIZE = 8
_ERROR_LINE = re.compile(r"^([\w.]*(Error|Exception)|ERROR|Error|error|FAILED|Failed)\b")  # a traceback's last line


class EngineError(UserError):
    """The engine cannot be built, loaded or used as asked; the message is one line."""


@dataclass(frozen=True)
class BuiltModel:
    folder: Path  # what og.Model loads: genai_config.json, model.onnx(.data), the tokenizer files
    precision: str  # advisor precision name: fp32 | int4-wo | int8-wo
    source: Path  # the Hugging Face folder it was built from
    build_s: float
    builder_command: tuple[str, ...]  # as run, with the output folder named as `folder`


def genai_unavailable() -> str | None:
    """None when everything the engine, its builder and the reference check need imports; else why not, with the
    pip hint."""
    return _unavailable(RUNTIME_MODULES + BUILD_MODULES)


@cache
def _unavailable(modules: tuple[str, ...]) -> str | None:
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # a broken install raises more than ImportError
            first = str(error).splitlines()[0] if str(error) else ""
            return f"the onnxruntime-genai engine needs {module}, which does not import ({type(error).__name__}: " \
                   f"{first}); {INSTALL_HINT}"
    return None


def _require(modules: tuple[str, ...]) -> None:
    reason = _unavailable(modules)
    if reason is not None:
        raise EngineError(reason)


def _check_hf_folder(hf_folder: Path) -> None:
    if not hf_folder.is_dir():
        raise EngineError(f"{hf_folder} is not a folder (expected a Hugging Face model folder)")
    if not (hf_folder / "config.json").is_file():
        raise EngineError(f"{hf_folder} has no config.json: not a Hugging Face model folder")
    if not any((hf_folder / name).is_file() for name in TOKENIZER_FILES):
        raise EngineError(f"{hf_folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); the engine needs one")


def build_genai_model(hf_folder: Path, dest: Path, precision: str, *, timeout_s: float = 900) -> BuiltModel:
    """Convert a Hugging Face folder with ONNX Runtime GenAI's builder for the CPU at `precision` (fp32, int4-wo,
    int8-wo) into `dest`, offline. The builder's log is kept beside it as DEST.build.log; `dest` appears only when the
    build succeeded (it is written as DEST.partial and renamed). EngineError on anything that goes wrong."""
    hf_folder, dest = Path(hf_folder).resolve(), Path(dest).resolve()
    if precision not in BUILDER_PRECISIONS:
        raise EngineError(f"onnxruntime-genai's builder offers {', '.join(BUILDER_PRECISIONS)} on a CPU, not "
                          f"{precision!r}")
    _check_hf_folder(hf_folder)
    _require(RUNTIME_MODULES + BUILD_MODULES)
    partial = dest.with_name(dest.name + ".partial")
    log_path = dest.with_name(dest.name + ".build.log")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove(partial)
    with tempfile.TemporaryDirectory(prefix="genai-cache-", dir=dest.parent) as cache_dir:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder), "-o",
                   str(partial), "-p", BUILDER_PRECISIONS[precision], "-e", "cpu", "-c", cache_dir]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                _remove(partial)
                raise EngineError(f"the onnxruntime-genai builder timed out after {timeout_s:.0f} s "
                                  f"(log: {log_path})") from None
        build_s = time.monotonic() - started
    if code != 0 or not (partial / "genai_config.json").is_file():
        _remove(partial)
        why = f"exit code {code}" if code else "no genai_config.json written"
        raise EngineError(f"the onnxruntime-genai builder failed ({why}): {last_meaningful_line(log_path)} "
                          f"(log: {log_path})")
    _remove(dest)
    partial.rename(dest)
    command[command.index(str(partial))] = str(dest)
    return BuiltModel(dest, precision, hf_folder, round(build_s, 3), tuple(command))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def last_meaningful_line(log_path: Path) -> str:
    """The builder's error in one line: the last line that names an error or exception (a traceback's final line),
    else the last non-empty line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# ---- serving ----------------------------------------------------------------------------------------------------


@dataclass
class _Sequence:
    request: GenerationRequest
    generator: object | None = None  # og.Generator, made in the step that runs the prompt
    generated: int = 0


class IncrementalDecoder:
    """Text of one sequence as its tokens arrive, the way vLLM and TGI detokenise: decode a short window of the most
    recent tokens and emit what it adds beyond the previously emitted text, holding back while the window's text
    ends in U+FFFD (a multi-byte character still incomplete). The concatenated output equals the tokenizer's decode
    of all the tokens, except a trailing incomplete character, which is never emitted. Special tokens are skipped."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: text before it was emitted and can no longer change
        self._read_offset = 0  # tokens up to here have had their text emitted

    def add(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset:self._read_offset])
        text = self._tokenizer.decode(self._ids[self._prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return text[len(prefix):]
        return ""


class OrtGenaiEngine:
    """advisor.llm.engine_api.GenerationEngine over a folder built by build_genai_model, on the CPU.

    One og.Generator per sequence (og.Engine batches statically on CPU: see the module docstring). `max_batch_size`
    is how many sequences are active at once; each step() gives each of them one token, running one batch-1 forward
    pass per sequence. Not thread-safe for add/step/cancel (one scheduler thread, as engine_api says); encode,
    new_decoder and chat_prompt may be called from any thread.
    """

    def __init__(self, folder: Path, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, name: str | None = None):
        folder = Path(folder)
        if max_batch_size < 1:
            raise EngineError(f"max_batch_size must be at least 1, got {max_batch_size}")
        config_path = folder / "genai_config.json"
        if not config_path.is_file():
            raise EngineError(f"{folder} is not an onnxruntime-genai model folder (no genai_config.json)")
        if not (folder / "tokenizer.json").is_file():
            raise EngineError(f"{folder} has no tokenizer.json; the engine decodes with it")
        _require(RUNTIME_MODULES)
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        try:
            config = json.loads(config_path.read_text())["model"]
            self._model = og.Model(str(folder))
            self._og_tokenizer = og.Tokenizer(self._model)
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as error:
            raise EngineError(f"cannot load the onnxruntime-genai model in {folder}: "
                              f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
        self._og = og
        self.folder = folder
        self.name = ENGINE_NAME
        self.version = og.__version__
        self.model_name = name or folder.name
        self.max_batch_size = max_batch_size
        self.max_context = int(config["context_length"])
        self.vocab_size = int(config["vocab_size"])
        eos = config.get("eos_token_id", [])
        self.eos_token_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self._bos_text = self._special_text(config.get("bos_token_id"))
        self._has_chat_template = _has_chat_template(folder)
        self._chat_lock = threading.Lock()  # og's tokenizer makes no thread-safety promise
        self._sequences: dict[int, _Sequence] = {}
        self._ids = itertools.count(1)

    @property
    def og_model(self):
        """The loaded og.Model (advisor.llm.measure_local times batched steps on it directly)."""
        return self._model

    def _special_text(self, token_id) -> str | None:
        return self._tokenizer.id_to_token(int(token_id)) if isinstance(token_id, int) else None

    # -- any thread --

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with the tokenizer's special tokens (a BOS where it adds one), except where the text
        already starts with the BOS token's text (a rendered chat template), which would double it."""
        with_special = not (self._bos_text and text.startswith(self._bos_text))
        return list(self._tokenizer.encode(text, add_special_tokens=with_special).ids)

    def new_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self._tokenizer)

    def decode(self, token_ids) -> str:
        """The whole text of `token_ids` (special tokens skipped), as the tokenizer decodes it."""
        return self._tokenizer.decode([int(t) for t in token_ids])

    def chat_prompt(self, messages: list[dict]) -> str:
        if not self._has_chat_template:
            lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
            return "\n".join(lines + ["assistant:"])
        with self._chat_lock:
            return self._og_tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)

    # -- the scheduler thread --

    @property
    def active(self) -> int:
        return len(self._sequences)

    def add(self, request: GenerationRequest) -> int:
        """Admit a sequence; its prompt runs in the next step(). EngineError when the engine is full, when prompt and
        output exceed max_context, or for a token id outside the vocabulary."""
        if len(self._sequences) >= self.max_batch_size:
            raise EngineError(f"the engine is full ({self.max_batch_size} active sequences)")
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.max_context:
            raise EngineError(f"{len(request.prompt_ids)} prompt tokens + {request.max_new_tokens} new tokens exceed "
                              f"the model's context of {self.max_context}")
        if not all(0 <= t < self.vocab_size for t in request.prompt_ids):
            raise EngineError(f"a prompt token id is outside the vocabulary (0..{self.vocab_size - 1})")
        sequence_id = next(self._ids)
        self._sequences[sequence_id] = _Sequence(request)
        return sequence_id

    def step(self) -> list[TokenEvent]:
        """One token for every active sequence (module docstring). A sequence whose pass fails is dropped and the
        step raises EngineError naming it, so the engine never retries it forever."""
        events = []
        for sequence_id, sequence in list(self._sequences.items()):
            try:
                token = self._advance(sequence)
            except Exception as error:
                del self._sequences[sequence_id]
                first = str(error).splitlines()[0] if str(error) else ""
                raise EngineError(f"sequence {sequence_id} failed in onnxruntime-genai and was dropped: "
                                  f"{type(error).__name__}: {first}") from None
            reason = None
            if token in self.eos_token_ids and not sequence.request.ignore_eos:
                reason = "stop"
            elif sequence.generated >= sequence.request.max_new_tokens or sequence.generator.is_done():
                reason = "length"
            if reason is not None:
                del self._sequences[sequence_id]
            events.append(TokenEvent(sequence_id, token, reason is not None, reason))
        return events

    def _advance(self, sequence: _Sequence) -> int:
        """One forward pass of `sequence` (its prompt the first time) and the greedy pick of its next token."""
        og = self._og
        if sequence.generator is None:
            request = sequence.request
            length = len(request.prompt_ids) + request.max_new_tokens
            options = {"max_length": length, "do_sample": False}
            if request.ignore_eos:
                options["min_length"] = length
            params = og.GeneratorParams(self._model)
            params.set_search_options(**options)
            sequence.generator = og.Generator(self._model, params)
            sequence.generator.append_tokens(np.asarray(request.prompt_ids, dtype=np.int32))
        sequence.generator.generate_next_token()
        sequence.generated += 1
        return int(sequence.generator.get_next_tokens()[0])

    def prompt_logits(self, prompt_ids) -> np.ndarray:
        """The next-token logits after `prompt_ids` (one prefill pass, outside the step loop): what the reference
        check compares."""
        og = self._og
        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=len(prompt_ids) + 1)
        generator = og.Generator(self._model, params)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        return np.asarray(generator.get_logits(), dtype=np.float32).reshape(-1)[-self.vocab_size:]

    def cancel(self, sequence_id: int) -> None:
        self._sequences.pop(sequence_id, None)

    def close(self) -> None:
        self._sequences.clear()
        self._model = None


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        return bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False
