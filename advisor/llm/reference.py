"""Does the built engine compute the model it was built from? Hugging Face transformers (torch, fp32, the same
weights) is the reference; the engine under test is advisor.llm.engine.OrtGenaiEngine over the built folder.

Both sides decode greedily with the end-of-sequence token masked until `new_tokens` tokens exist (transformers'
min_new_tokens, the engine's ignore_eos), from the same token ids (the check first requires both tokenisers to agree
on every prompt).

The rules, by precision:
- fp32: every prompt's first `new_tokens` generated tokens are identical. Both run the same fp32 weights, so any
  difference beyond rounding would show as a different token; the tiny models are made with a clear top-1 margin
  (advisor.llm.tiny_model) so rounding alone does not flip a greedy pick.
- int8-wo / int4-wo: token identity is not expected (block quantisation moves the logits), so the first-step logits
  after each prompt are compared instead. On every prompt: (a) the cosine similarity of the engine's logits to the
  reference's is at least COSINE_FLOOR[precision], and (b) the reference's top-1 token is among the engine's TOP_K
  highest logits. This is a sameness check -- "these are the reference's weights, quantised" -- not a quality
  guarantee. Measured on tiny random-weight models (llama seeds 0-2, qwen2 seed 0; 6 prompts each), which quantise
  worse than trained ones: the builder's int8 kept cosine >= 0.999, its int4 (symmetric blocks of 32, int8
  activations) >= 0.886 with the reference's top-1 at rank <= 31 (random weights give flat top logits, so the rank
  moves a lot); other weights gave cosines of -0.09 to 0.05 and ranks spread over the whole vocabulary. The floors
  sit below the quantised figures and far above other weights'; (b) guards against logits that correlate overall but
  bury the reference's choice. How much int4 costs in quality needs a task metric (perplexity), which random weights
  cannot give.
The share of prompts whose first token agrees, the lowest cosine and the largest logit difference are reported in
`detail` at every precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from advisor.llm.engine import BuiltModel, OrtGenaiEngine
from advisor.llm.engine_api import GenerationRequest

DEFAULT_PROMPTS = (
    "The quick brown fox jumps over",
    "Hello, how are you today?",
    "Latency is the time until the first token",
    "Numbers: 0 1 2 3",
    "Cloud instances differ in price per hour",
    "A language model reads a prompt, computes its key and value cache",
)
COSINE_FLOOR = {"int8-wo": 0.98, "int4-wo": 0.8}
TOP_K = 64
EXACT_PRECISIONS = ("fp32",)


@dataclass(frozen=True)
class ReferenceCheck:
    passed: bool
    precision: str
    rule: str  # the rule applied, in words
    prompts: int
    tokens_compared: int  # generated tokens compared (fp32), or first-step logit vectors compared (quantised)
    first_mismatch: str | None  # the first prompt that broke the rule, and how
    detail: str  # first-token agreement, lowest cosine, largest logit difference

    def to_dict(self) -> dict:
        return asdict(self)


def rule_for(precision: str) -> str:
    if precision in EXACT_PRECISIONS:
        return f"{precision}: every prompt's greedy tokens identical to transformers fp32"
    if precision not in COSINE_FLOOR:
        raise ValueError(f"no reference rule for precision {precision!r}")
    return (f"{precision}: on every prompt, first-step logits' cosine similarity to transformers fp32 >= "
            f"{COSINE_FLOOR[precision]:g} and the reference's top-1 token within the engine's top {TOP_K}")


def check_against_reference(hf_folder: Path, built: BuiltModel, *, prompts: Sequence[str] | None = None,
                            new_tokens: int = 8) -> ReferenceCheck:
    """Run the reference and the engine on `prompts` (DEFAULT_PROMPTS when None) and apply the rule of
    `built.precision` (module docstring). Runs in this process: transformers and the engine both load the model."""
    import torch
    import transformers

    prompts = tuple(prompts or DEFAULT_PROMPTS)
    rule = rule_for(built.precision)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32).eval()
    engine = OrtGenaiEngine(built.folder, max_batch_size=len(prompts))
    try:
        prompt_ids = []
        for index, prompt in enumerate(prompts):
            reference_ids = list(tokenizer(prompt).input_ids)
            if engine.encode(prompt) != reference_ids:
                return ReferenceCheck(False, built.precision, rule, len(prompts), 0,
                                      f"prompt {index} ({prompt[:40]!r}): the engine tokenises it differently",
                                      "tokenisers disagree")
            prompt_ids.append(reference_ids)
        reference_tokens, reference_logits = _reference(model, prompt_ids, new_tokens)
        engine_tokens = _engine_greedy(engine, prompt_ids, new_tokens)
        engine_logits = [engine.prompt_logits(ids) for ids in prompt_ids]
    finally:
        engine.close()
    cosines = [_cosine(e, r) for e, r in zip(engine_logits, reference_logits)]
    ranks = [int(np.sum(e > e[int(np.argmax(r))])) for e, r in zip(engine_logits, reference_logits)]
    first_agree = sum(e[0] == r[0] for e, r in zip(engine_tokens, reference_tokens))
    max_diff = max(float(np.max(np.abs(e - r))) for e, r in zip(engine_logits, reference_logits))
    detail = (f"first token agrees on {first_agree}/{len(prompts)} prompts; first-step logits: lowest cosine "
              f"{min(cosines):.4f}, largest |difference| {max_diff:.3g}, reference top-1 at engine rank <= "
              f"{max(ranks)}")
    if built.precision in EXACT_PRECISIONS:
        mismatch = _first_token_mismatch(prompts, engine_tokens, reference_tokens)
        compared = sum(len(r) for r in reference_tokens)
    else:
        mismatch = _first_logit_mismatch(prompts, cosines, ranks, COSINE_FLOOR[built.precision])
        compared = len(prompts)
    return ReferenceCheck(mismatch is None, built.precision, rule, len(prompts), compared, mismatch, detail)


def _reference(model, prompt_ids: list[list[int]], new_tokens: int) -> tuple[list[list[int]], list[np.ndarray]]:
    import torch

    tokens, logits = [], []
    with torch.no_grad():
        for ids in prompt_ids:
            inputs = torch.tensor([ids], dtype=torch.long)
            logits.append(model(inputs).logits[0, -1].to(torch.float32).numpy())
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False, num_beams=1,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=model.config.pad_token_id or 0)
            tokens.append([int(t) for t in out[0, len(ids):]])
    return tokens, logits


def _engine_greedy(engine: OrtGenaiEngine, prompt_ids: list[list[int]], new_tokens: int) -> list[list[int]]:
    """All prompts through the engine's step loop, as the server drives it."""
    ids = [engine.add(GenerationRequest(tuple(p), new_tokens, ignore_eos=True)) for p in prompt_ids]
    out: dict[int, list[int]] = {i: [] for i in ids}
    for _ in range(new_tokens + 1):
        for event in engine.step():
            out[event.sequence_id].append(event.token_id)
        if not engine.active:
            break
    return [out[i] for i in ids]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def _first_token_mismatch(prompts, engine_tokens, reference_tokens) -> str | None:
    for index, (prompt, got, want) in enumerate(zip(prompts, engine_tokens, reference_tokens)):
        if got != want:
            position = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
            got_token = got[position] if position < len(got) else None
            want_token = want[position] if position < len(want) else None
            return (f"prompt {index} ({prompt[:40]!r}), generated token {position}: engine {got_token} vs "
                    f"reference {want_token}")
    return None


def _first_logit_mismatch(prompts, cosines, ranks, floor: float) -> str | None:
    for index, (prompt, cosine, rank) in enumerate(zip(prompts, cosines, ranks)):
        if not cosine >= floor:
            return f"prompt {index} ({prompt[:40]!r}): logits' cosine similarity {cosine:.4f} < {floor:g}"
        if rank >= TOP_K:
            return (f"prompt {index} ({prompt[:40]!r}): the reference's top-1 token ranks {rank + 1} in the "
                    f"engine's logits (needs top {TOP_K})")
    return None
