"""What a decoder-only language model is made of, read from its Hugging Face config.json alone (no weights).

Parameters (a llama-style decoder: RMSNorm, gated MLP, grouped-query attention), with h = hidden_size,
H = num_attention_heads, K = num_key_value_heads, d = head_dim, I = intermediate_size (per expert), E = experts,
V = vocab_size, L = num_hidden_layers:

    attention per layer  = h*H*d (q) + 2*h*K*d (k, v) + H*d*h (o)
                           + H*d + 2*K*d where the family has q/k/v biases (qwen2; llama's attention_bias)
                           + h where the o projection has a bias (llama's attention_bias)
                           + 2*d where the family normalises q and k per head (qwen3)
    MLP per layer        = E * 3*h*I (gate, up, down per expert)  [+ E*(2I + h) with llama's mlp_bias]
    router per layer     = h*E (MoE only)
    norms per layer      = 2*h (input and post-attention RMSNorm weights)
    params_total         = V*h (embeddings) + L * (attention + MLP + router + norms) + h (final norm)
                           + V*h (lm_head) unless tie_word_embeddings
    params_active        = the same with experts_per_token experts in place of E (what one token touches)

Checked against the published counts: Llama-3.1-8B 8,030,261,248, Llama-3.1-70B 70,553,706,496 (the safetensors
index totals), Mixtral-8x7B 46.7 B total / 12.9 B active (Mistral AI's announcement), Qwen2.5-7B 7.61 B
(Qwen's model card); tests/test_llm_architecture.py derives them by hand.

KV cache per token (vLLM's paged cache stores K and V of every layer):

    kv_bytes_per_token = 2 * L * K * d * bytes(kv dtype)

FLOPs (a multiply-add is 2 FLOPs; elementwise work, norms and softmax are left out, they are < 1 % of a step):

    linear_flops_per_token = 2 * (weights that multiply the hidden state for one token: the active experts' and
                             attention matrices, the router, lm_head; not the embedding lookup, norms or biases)
    attention_flops(q, c)  = 4 * L * H * d * sum_{i=1..q} min(c + i, window)
                             (QK^T and AV, 2*d FLOPs each per attended token and head; query i of a causal chunk
                             of q tokens after c cached ones attends to c + i tokens, at most the sliding window)

A prefill computes logits for its last token only (vLLM's LogitsProcessor keeps the sampled positions), so
prefill_flops charges lm_head once, not per prompt token.

Sources: Hugging Face transformers' modeling_llama.py / modeling_mistral.py / modeling_mixtral.py /
modeling_qwen2.py / modeling_qwen3.py (the layer shapes and where the biases are), read 2026-12-06.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from advisor.errors import UserError
from advisor.llm.precision import KV_DTYPES, kv_dtype_bytes

if TYPE_CHECKING:
    from advisor.llm.precision import Precision


class LlmConfigError(UserError, ValueError):
    """A config.json the planner cannot use; the message is one line naming the file and the field."""


# model_type values of decoder-only models, for configs without an `architectures` list. Only some of them can be
# sized (SUPPORTED_FAMILIES); the rest are recognised so the error says "not supported yet", not "not a causal LM".
KNOWN_DECODER_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi", "phi3", "gpt2", "gpt_neox", "gptj", "falcon", "opt", "bloom", "mpt", "starcoder2", "deepseek_v2",
    "deepseek_v3", "olmo", "olmo2", "granite", "cohere", "internlm2", "stablelm", "baichuan", "chatglm",
})

# Families whose layer shapes the formulas above describe: llama-style RMSNorm + gated MLP + GQA.
# Values: (q/k/v bias by default, q/k norm per head).
SUPPORTED_FAMILIES = {
    "llama": (False, False),
    "mistral": (False, False),
    "mixtral": (False, False),
    "qwen2": (True, False),    # Qwen2Attention: q_proj/k_proj/v_proj bias=True, o_proj bias=False
    "qwen3": (False, True),    # Qwen3Attention: attention_bias (False), q_norm and k_norm over head_dim
}

_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
             "max_position_embeddings")


def is_causal_lm(config: dict) -> bool:
    """True for a decoder-only language model: an architecture named *ForCausalLM (or GPT-2's *LMHeadModel), or,
    without an architectures list, a known decoder model_type. A *ForSequenceClassification head is not one."""
    architectures = config.get("architectures") or []
    if isinstance(architectures, list) and architectures:
        return any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return config.get("model_type") in KNOWN_DECODER_TYPES


@dataclass(frozen=True)
class LlmArchitecture:
    """The shapes that decide memory and work. Formulas: the module docstring."""

    name: str                  # the folder holding config.json
    model_type: str            # llama, mistral, mixtral, qwen2, qwen3
    hidden_size: int
    intermediate_size: int     # per expert for MoE
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int          # num_key_value_heads; = num_attention_heads when absent (plain multi-head attention)
    head_dim: int              # config head_dim, else hidden_size // num_attention_heads
    vocab_size: int
    max_context: int           # max_position_embeddings
    sliding_window: int | None  # tokens a sliding-window layer attends to; None when absent or disabled
    tie_word_embeddings: bool
    num_experts: int = 1       # num_local_experts (Mixtral); 1 = dense
    experts_per_token: int = 1  # num_experts_per_tok
    sliding_window_layers: int = 0  # layers that use the window (qwen2: those from max_window_layers on)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    checkpoint_dtype: str | None = None         # config torch_dtype: what the published weights are stored in
    checkpoint_quantization: str | None = None  # quantization_config.quant_method of an already quantized checkpoint

    # --- parameters -------------------------------------------------------------------------------------------

    @property
    def _attention_matrix_params(self) -> int:
        h, heads, kv, d = self.hidden_size, self.num_attention_heads, self.num_kv_heads, self.head_dim
        return h * heads * d + 2 * h * kv * d + heads * d * h

    @property
    def kv_projection_params(self) -> int:
        """k_proj and v_proj weights of all layers: the part vLLM replicates when TP exceeds the KV heads."""
        return self.num_layers * 2 * self.hidden_size * self.num_kv_heads * self.head_dim

    @property
    def _attention_other_params(self) -> int:
        heads, kv, d = self.num_attention_heads, self.num_kv_heads, self.head_dim
        return ((heads * d + 2 * kv * d) if self.qkv_bias else 0) + (self.hidden_size if self.o_bias else 0) \
            + (2 * d if self.qk_norm else 0)

    def _expert_params(self, experts: int) -> tuple[int, int]:
        """(matrix weights, biases) of `experts` experts' gated MLPs in one layer."""
        h, inter = self.hidden_size, self.intermediate_size
        return experts * 3 * h * inter, (experts * (2 * inter + h) if self.mlp_bias else 0)

    @property
    def _router_params(self) -> int:
        return self.hidden_size * self.num_experts if self.num_experts > 1 else 0

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """The lm_head weights stored separately (0 when tied to the embeddings)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def _params(self, experts: int) -> int:
        matrices, biases = self._expert_params(experts)
        layer = self._attention_matrix_params + self._attention_other_params + matrices + biases \
            + self._router_params + 2 * self.hidden_size
        return self.embedding_params + self.num_layers * layer + self.hidden_size + self.lm_head_params

    @property
    def params_total(self) -> int:
        """Every stored parameter (module docstring)."""
        return self._params(self.num_experts)

    @property
    def params_active(self) -> int:
        """Parameters one token touches: experts_per_token of the experts (= params_total for a dense model)."""
        return self._params(self.experts_per_token)

    @property
    def params_quantizable(self) -> int:
        """Weights AWQ/GPTQ/fp8 checkpoints quantize: the decoder layers' linear matrices (attention and experts).

        Embeddings, lm_head, norms, biases and the MoE router stay in 16 bits in those checkpoints (AutoAWQ's and
        llm-compressor's defaults leave lm_head and the router, `gate`, unquantized)."""
        return self.num_layers * (self._attention_matrix_params + self._expert_params(self.num_experts)[0])

    @property
    def params_quantizable_active(self) -> int:
        return self.num_layers * (self._attention_matrix_params + self._expert_params(self.experts_per_token)[0])

    def weight_bytes(self, precision: Precision) -> float:
        """All weights at `precision`: the quantizable matrices at its width, everything else at 16 bits."""
        quantized = self.params_quantizable
        return precision.weight_bytes(quantized, unquantized_params=self.params_total - quantized)

    def active_weight_bytes(self, precision: Precision) -> float:
        """The weights one token reads (MoE: experts_per_token of the experts)."""
        quantized = self.params_quantizable_active
        return precision.weight_bytes(quantized, unquantized_params=self.params_active - quantized)

    # --- KV cache and FLOPs -----------------------------------------------------------------------------------

    def kv_bytes_per_token(self, kv_dtype: str) -> int:
        """2 (K and V) x layers x kv_heads x head_dim x bytes of the KV dtype."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * kv_dtype_bytes(kv_dtype)

    def linear_flops_per_token(self) -> float:
        """2 x the active weights that multiply: attention and active-expert matrices, router, lm_head.

        A tied lm_head still multiplies (it reuses the embedding matrix), so it counts either way; the embedding
        lookup, norms and bias adds do not."""
        per_layer = self._attention_matrix_params + self._expert_params(self.experts_per_token)[0] \
            + self._router_params
        return 2.0 * (self.num_layers * per_layer + self.vocab_size * self.hidden_size)

    @property
    def lm_head_flops_per_token(self) -> float:
        return 2.0 * self.vocab_size * self.hidden_size

    def _attended(self, query_tokens: int, context_before: int, window: int | None) -> int:
        """sum over i = 1..q of min(c + i, window): the tokens a causal chunk's queries attend to."""
        q, c = query_tokens, context_before
        if window is None:
            return q * c + q * (q + 1) // 2
        uncapped = max(0, min(q, window - c))  # queries whose c + i is still within the window
        return uncapped * c + uncapped * (uncapped + 1) // 2 + (q - uncapped) * window

    def attention_flops(self, query_tokens: int, context_before: int) -> float:
        """Causal QK^T and AV: 4 x heads x head_dim x attended tokens, summed over layers (window layers capped)."""
        if query_tokens < 0 or context_before < 0:
            raise ValueError(f"query_tokens ({query_tokens}) and context_before ({context_before}) must be >= 0")
        full_layers = self.num_layers - self.sliding_window_layers
        attended = full_layers * self._attended(query_tokens, context_before, None)
        if self.sliding_window_layers:
            attended += self.sliding_window_layers * self._attended(query_tokens, context_before, self.sliding_window)
        return 4.0 * self.num_attention_heads * self.head_dim * attended

    def prefill_flops(self, prompt_tokens: int, context_before: int = 0) -> float:
        """A prompt chunk: every token through the layers, lm_head for the last one only, plus causal attention."""
        if prompt_tokens <= 0:
            return 0.0
        body = self.linear_flops_per_token() - self.lm_head_flops_per_token
        return prompt_tokens * body + self.lm_head_flops_per_token + self.attention_flops(prompt_tokens,
                                                                                         context_before)

    def decode_flops(self, context: int) -> float:
        """One new token attending to `context` tokens (itself included): linear work plus its attention."""
        if context < 1:
            raise ValueError(f"context ({context}) must be >= 1: the new token attends at least to itself")
        return self.linear_flops_per_token() + self.attention_flops(1, context - 1)

    def kv_tokens_cached(self, context: int) -> float:
        """Tokens of KV one sequence of `context` tokens holds, averaged over layers (window layers keep less)."""
        full = self.num_layers - self.sliding_window_layers
        windowed = min(context, self.sliding_window) if self.sliding_window_layers else 0
        return (full * context + self.sliding_window_layers * windowed) / self.num_layers

    def to_dict(self) -> dict:
        """The report's `model.llm` block."""
        data = {
            "name": self.name, "model_type": self.model_type,
            "params": self.params_total, "active_params": self.params_active,
            "layers": self.num_layers, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "heads": self.num_attention_heads,
            "kv_heads": self.num_kv_heads, "head_dim": self.head_dim, "vocab": self.vocab_size,
            "max_context": self.max_context, "sliding_window": self.sliding_window,
            "sliding_window_layers": self.sliding_window_layers, "tie_word_embeddings": self.tie_word_embeddings,
            "experts": self.num_experts, "experts_per_token": self.experts_per_token,
            "kv_cache_bytes_per_token": {dtype: self.kv_bytes_per_token(dtype) for dtype in KV_DTYPES},
            "linear_flops_per_token": self.linear_flops_per_token(),
            "checkpoint_dtype": self.checkpoint_dtype, "checkpoint_quantization": self.checkpoint_quantization,
        }
        return data


def _config_path(source: Path) -> Path:
    source = Path(source)
    if source.is_dir():
        path = source / "config.json"
        if not path.is_file():
            raise LlmConfigError(f"{source}: no config.json in this folder; give a Hugging Face model folder "
                                 f"(config.json is enough, the weights are not needed)")
        return path
    if source.is_file():
        return source
    raise LlmConfigError(f"{source}: no such folder or file; give a Hugging Face model folder holding config.json")


def _int_field(config: dict, key: str, path: Path, *, minimum: int = 1) -> int:
    value = config.get(key)
    if value is None:
        raise LlmConfigError(f"{path}: field '{key}' is missing; a causal LM config.json needs "
                             f"{', '.join(_REQUIRED)}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LlmConfigError(f"{path}: field '{key}' is {value!r}; expected an integer >= {minimum}")
    return value


def load_architecture(source: Path) -> LlmArchitecture:
    """Read a model folder (or its config.json) into an LlmArchitecture; LlmConfigError on anything unusable."""
    path = _config_path(Path(source))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmConfigError(f"{path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise LlmConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    if not isinstance(config, dict):
        raise LlmConfigError(f"{path}: expected a JSON object, found {type(config).__name__}")
    # Multimodal wrappers nest the language model's shapes; planning covers text-only decoders.
    if not is_causal_lm(config):
        kind = (config.get("architectures") or [None])[0] or config.get("model_type") or "unknown"
        raise LlmConfigError(f"{path}: field 'architectures' says this is a {kind} config, not a causal language "
                             f"model (expected an architecture ending in ForCausalLM)")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise LlmConfigError(f"{path}: field 'model_type' is {model_type!r}, a family this planner cannot size yet "
                             f"(supported: {', '.join(SUPPORTED_FAMILIES)})")
    values = {key: _int_field(config, key, path) for key in _REQUIRED}
    hidden, heads = values["hidden_size"], values["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else _int_field(config, "num_key_value_heads", path)
    if heads % kv_heads:
        raise LlmConfigError(f"{path}: field 'num_key_value_heads' ({kv_heads}) does not divide "
                             f"num_attention_heads ({heads})")
    if config.get("head_dim") is not None:
        head_dim = _int_field(config, "head_dim", path)
    elif hidden % heads:
        raise LlmConfigError(f"{path}: field 'num_attention_heads' ({heads}) does not divide hidden_size ({hidden}) "
                             f"and there is no head_dim")
    else:
        head_dim = hidden // heads
    experts = config.get("num_local_experts")
    experts = 1 if experts is None else _int_field(config, "num_local_experts", path)
    per_token = config.get("num_experts_per_tok")
    per_token = (1 if experts == 1 else 2) if per_token is None else _int_field(config, "num_experts_per_tok", path)
    if per_token > experts:
        raise LlmConfigError(f"{path}: field 'num_experts_per_tok' ({per_token}) exceeds num_local_experts "
                             f"({experts})")
    layers = values["num_hidden_layers"]
    window, window_layers = _sliding_window(config, model_type, layers, path)
    default_qkv_bias, qk_norm = SUPPORTED_FAMILIES[model_type]
    attention_bias = bool(config.get("attention_bias", False))
    quantization = config.get("quantization_config")
    return LlmArchitecture(
        name=path.parent.resolve().name or str(config.get("_name_or_path") or "model"),
        model_type=model_type, hidden_size=hidden, intermediate_size=values["intermediate_size"],
        num_layers=layers, num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        vocab_size=values["vocab_size"], max_context=values["max_position_embeddings"],
        sliding_window=window, tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        num_experts=experts, experts_per_token=per_token, sliding_window_layers=window_layers,
        qkv_bias=default_qkv_bias or attention_bias,
        # llama's attention_bias puts a bias on o_proj too; qwen2/qwen3 never do
        o_bias=attention_bias and model_type in ("llama", "mistral", "mixtral"),
        mlp_bias=bool(config.get("mlp_bias", False)), qk_norm=qk_norm,
        checkpoint_dtype=config.get("torch_dtype") or config.get("dtype"),
        checkpoint_quantization=quantization.get("quant_method") if isinstance(quantization, dict) else None,
    )


def _sliding_window(config: dict, model_type: str, layers: int, path: Path) -> tuple[int | None, int]:
    """(window, layers that use it). qwen2/qwen3 keep a window in the config but use it only with
    use_sliding_window true, and then only in layers from max_window_layers on (transformers' Qwen2Attention)."""
    window = config.get("sliding_window")
    # Qwen2Config defaults use_sliding_window to False; mistral-style configs have no switch, the window is used
    switched_off = not config.get("use_sliding_window", False) if model_type in ("qwen2", "qwen3") \
        else config.get("use_sliding_window") is False
    if window is None or switched_off:
        return None, 0
    window = _int_field(config, "sliding_window", path)
    if model_type in ("qwen2", "qwen3"):
        first = config.get("max_window_layers")
        first = 0 if first is None else _int_field(config, "max_window_layers", path, minimum=0)
        used = max(0, layers - first)
        return (window, used) if used else (None, 0)
    return window, layers
