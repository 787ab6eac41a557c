"""advisor.llm.architecture: parameter counts, KV bytes and FLOPs checked against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor.errors import UserError
from advisor.llm.architecture import LlmArchitecture, LlmConfigError, is_causal_lm, load_architecture

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "llm"
SHIPPED = ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b", "llama-3.2-3b", "mistral-7b-v0.3",
           "mixtral-8x7b", "qwen2.5-7b", "qwen2.5-72b"]


def _write(folder: Path, config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text)
    return folder


def _tiny(**overrides) -> dict:
    """h 64, 4 heads of 16, 2 KV heads, MLP 128, 2 layers, vocab 100: small enough to count by hand."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 100, "max_position_embeddings": 2048, "tie_word_embeddings": False}
    config.update(overrides)
    return config


def test_llama_3_1_8b_params():
    """Published 8,030,261,248 (the safetensors index). By hand, h 4096, 32 heads x 128, 8 KV heads, I 14336:
    embeddings 128256 x 4096 = 525,336,576; per layer q 4096x4096 = 16,777,216, k and v 4096x1024 = 4,194,304 each,
    o 16,777,216 (attention 41,943,040), MLP 3 x 4096 x 14336 = 176,160,768, norms 2 x 4096 = 8,192: 218,112,000;
    x 32 layers = 6,979,584,000; final norm 4,096; lm_head 525,336,576 (not tied).
    525,336,576 + 6,979,584,000 + 4,096 + 525,336,576 = 8,030,261,248."""
    arch = load_architecture(EXAMPLES / "llama-3.1-8b")
    assert arch.params_total == 8_030_261_248
    assert arch.params_active == arch.params_total  # dense


def test_llama_3_1_70b_params():
    """Published 70,553,706,496. h 8192, 64 heads x 128, 8 KV heads, I 28672, 80 layers:
    embeddings 128256 x 8192 = 1,050,673,152 (and the same for lm_head); per layer q 67,108,864, k and v
    8,388,608 each, o 67,108,864 (150,994,944), MLP 3 x 8192 x 28672 = 704,643,072, norms 16,384: 855,654,400;
    x 80 = 68,452,352,000; + final norm 8,192 + 2 x 1,050,673,152 = 70,553,706,496."""
    assert load_architecture(EXAMPLES / "llama-3.1-70b").params_total == 70_553_706_496


def test_mixtral_total_and_active():
    """Mixtral-8x7B: 46.7 B total, 12.9 B active (Mistral AI). h 4096, 8 experts of I 14336, 2 per token, V 32000:
    embeddings 32000 x 4096 = 131,072,000 (x2 with lm_head = 262,144,000); per layer attention 41,943,040,
    one expert 3 x 4096 x 14336 = 176,160,768, router 4096 x 8 = 32,768, norms 8,192.
    total: layer 41,943,040 + 8 x 176,160,768 + 32,768 + 8,192 = 1,451,270,144; x 32 = 46,440,644,608;
           + 4,096 + 262,144,000 = 46,702,792,704
    active: layer 41,943,040 + 2 x 176,160,768 + 32,768 + 8,192 = 394,305,536; x 32 = 12,617,777,152;
           + 4,096 + 262,144,000 = 12,879,925,248"""
    arch = load_architecture(EXAMPLES / "mixtral-8x7b")
    assert (arch.num_experts, arch.experts_per_token) == (8, 2)
    assert arch.params_total == 46_702_792_704
    assert arch.params_active == 12_879_925_248
    assert round(arch.params_total / 1e9, 1) == 46.7 and round(arch.params_active / 1e9, 1) == 12.9


def test_qwen2_counts_qkv_biases():
    """Qwen2.5-7B: 7.61 B, 6.53 B without embeddings (Qwen's model card). Per layer: q 3584x3584 = 12,845,056,
    k and v 3584x512 = 1,835,008 each, o 12,845,056, q/k/v biases 3584 + 512 + 512 = 4,608 (29,364,736);
    MLP 3 x 3584 x 18944 = 203,685,888; norms 7,168: 233,057,792; x 28 = 6,525,618,176; + final norm 3,584
    + 2 x 152064 x 3584 (1,089,994,752) = 7,615,616,512. Without the biases it would be 129,024 fewer."""
    arch = load_architecture(EXAMPLES / "qwen2.5-7b")
    assert arch.qkv_bias and not arch.o_bias
    assert arch.params_total == 7_615_616_512
    assert arch.params_total - arch.embedding_params - arch.lm_head_params == 6_525_621_760  # 6.53 B


def test_kv_bytes_per_token():
    """2 (K, V) x layers x KV heads x head_dim x bytes: 8B fp16 2 x 32 x 8 x 128 x 2 = 131,072;
    70B 2 x 80 x 8 x 128 x 2 = 327,680; fp8 halves both."""
    small, large = load_architecture(EXAMPLES / "llama-3.1-8b"), load_architecture(EXAMPLES / "llama-3.1-70b")
    assert small.kv_bytes_per_token("fp16") == 131_072
    assert small.kv_bytes_per_token("bf16") == 131_072
    assert large.kv_bytes_per_token("fp16") == 327_680
    assert large.kv_bytes_per_token("fp8") == 163_840
    with pytest.raises(ValueError, match="unknown KV cache dtype 'int3'"):
        small.kv_bytes_per_token("int3")


def test_flops_by_hand(tmp_path):
    """Tiny config (h 64, 4 heads x 16, 2 KV heads, I 128, 2 layers, V 100):
    matrices per layer q 64x64 = 4,096, k and v 64x32 = 2,048 each, o 4,096, MLP 3 x 64 x 128 = 24,576: 36,864;
    x 2 layers = 73,728; lm_head 100 x 64 = 6,400; linear FLOPs/token = 2 x 80,128 = 160,256.
    attention: 4 x 2 layers x 4 heads x 16 = 512 FLOPs per attended token.
    prefill of 3 tokens: attended 1 + 2 + 3 = 6 -> 3,072; lm_head only for the last token:
        3 x (160,256 - 12,800) + 12,800 + 3,072 = 458,240
    decode at context 10: 160,256 + 512 x 10 = 165,376
    a 2-token chunk after 5 cached tokens attends to 6 + 7 = 13 -> 6,656"""
    arch = load_architecture(_write(tmp_path / "tiny", _tiny()))
    assert arch.head_dim == 16
    assert arch.linear_flops_per_token() == 160_256
    assert arch.attention_flops(3, 0) == 3_072
    assert arch.prefill_flops(3) == 458_240
    assert arch.decode_flops(10) == 165_376
    assert arch.attention_flops(2, 5) == 6_656
    assert arch.prefill_flops(0) == 0


def test_sliding_window_caps_attention(tmp_path):
    """Window 4: a 3-token chunk after 2 cached tokens attends to min(3,4) + min(4,4) + min(5,4) = 11 -> 512 x 11;
    decode at context 100 attends to 4 tokens only: 160,256 + 512 x 4 = 162,304."""
    arch = load_architecture(_write(tmp_path / "windowed", _tiny(model_type="mistral", sliding_window=4,
                                                                  architectures=["MistralForCausalLM"])))
    assert (arch.sliding_window, arch.sliding_window_layers) == (4, 2)
    assert arch.attention_flops(3, 2) == 512 * 11
    assert arch.decode_flops(100) == 162_304
    assert arch.kv_tokens_cached(100) == 4


def test_qwen_window_only_when_switched_on(tmp_path):
    """Qwen2 keeps sliding_window in its config but uses it only with use_sliding_window, and then only in the
    layers from max_window_layers on: 2 layers, max_window_layers 1 -> one windowed layer."""
    qwen = dict(_tiny(model_type="qwen2", architectures=["Qwen2ForCausalLM"]), sliding_window=4, max_window_layers=1)
    off = load_architecture(_write(tmp_path / "off", dict(qwen, use_sliding_window=False)))
    on = load_architecture(_write(tmp_path / "on", dict(qwen, use_sliding_window=True)))
    assert off.sliding_window is None and off.sliding_window_layers == 0
    assert (on.sliding_window, on.sliding_window_layers) == (4, 1)
    # decode at context 100: one layer attends to 100 tokens, the other to 4 -> 4 x 4 heads x 16 x 104
    assert on.attention_flops(1, 99) == 4 * 4 * 16 * (100 + 4)
    assert load_architecture(EXAMPLES / "qwen2.5-72b").sliding_window is None


@pytest.mark.parametrize("folder", SHIPPED)
def test_every_shipped_config_loads(folder):
    arch = load_architecture(EXAMPLES / folder)
    assert arch.name == folder
    assert arch.num_attention_heads % arch.num_kv_heads == 0
    data = arch.to_dict()
    assert {"params", "active_params", "layers", "kv_heads", "head_dim", "max_context",
            "kv_cache_bytes_per_token"} <= set(data)
    assert data["kv_cache_bytes_per_token"]["fp16"] == arch.kv_bytes_per_token("fp16")
    json.dumps(data)
    # the README's table is computed from these files: keep them in step
    readme = (EXAMPLES / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith(f"| {folder} |"))
    assert f"{arch.params_total:,}" in row


def test_shipped_shapes():
    """A few published figures: Llama-3.2-1B ties its embeddings and has head_dim 64; the 405B has 126 layers."""
    one_b = load_architecture(EXAMPLES / "llama-3.2-1b")
    assert one_b.tie_word_embeddings and one_b.head_dim == 64 and one_b.params_total == 1_235_814_400
    big = load_architecture(EXAMPLES / "llama-3.1-405b")
    assert (big.num_layers, big.hidden_size, big.num_kv_heads, big.max_context) == (126, 16384, 8, 131072)
    assert big.params_total == 405_853_388_800
    assert load_architecture(EXAMPLES / "llama-3.1-8b" / "config.json").name == "llama-3.1-8b"


def test_is_causal_lm():
    assert is_causal_lm({"architectures": ["LlamaForCausalLM"]})
    assert is_causal_lm({"model_type": "mistral"})
    assert not is_causal_lm({"architectures": ["BertModel"], "model_type": "bert"})
    assert not is_causal_lm({"model_type": "t5"})


def _error(source) -> str:
    with pytest.raises(LlmConfigError) as caught:
        load_architecture(source)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_inputs_each_give_one_line(tmp_path):
    assert "no such folder or file" in _error(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(empty) == (f"{empty}: no config.json in this folder; give a Hugging Face model folder "
                             f"(config.json is enough, the weights are not needed)")
    broken = _write(tmp_path / "broken", '{"hidden_size": 4096,')
    assert f"{broken / 'config.json'}: invalid JSON at line 1" in _error(broken)
    assert "expected a JSON object, found list" in _error(_write(tmp_path / "list", "[1, 2]"))
    bert = _write(tmp_path / "bert", {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 768})
    assert _error(bert).endswith("field 'architectures' says this is a BertModel config, not a causal language "
                                 "model (expected an architecture ending in ForCausalLM)")
    reward = _write(tmp_path / "reward", _tiny(architectures=["LlamaForSequenceClassification"]))
    assert "this is a LlamaForSequenceClassification config, not a causal language model" in _error(reward)
    gpt2 = _write(tmp_path / "gpt2", {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    assert "field 'model_type' is 'gpt2', a family this planner cannot size yet" in _error(gpt2)
    falcon = _write(tmp_path / "falcon", {"architectures": ["FalconForCausalLM"], "model_type": "falcon"})
    assert "field 'model_type' is 'falcon', a family this planner cannot size yet" in _error(falcon)
    missing = _tiny()
    del missing["num_hidden_layers"]
    message = _error(_write(tmp_path / "missing", missing))
    assert f"{tmp_path / 'missing' / 'config.json'}: field 'num_hidden_layers' is missing" in message
    assert "field 'vocab_size' is -5; expected an integer >= 1" in _error(_write(tmp_path / "neg",
                                                                                  _tiny(vocab_size=-5)))
    assert "field 'hidden_size' is '64'" in _error(_write(tmp_path / "str", _tiny(hidden_size="64")))
    assert "field 'num_attention_heads' (5) does not divide hidden_size (64) and there is no head_dim" in \
        _error(_write(tmp_path / "heads", _tiny(num_attention_heads=5, num_key_value_heads=5)))
    assert "field 'num_key_value_heads' (3) does not divide num_attention_heads (4)" in \
        _error(_write(tmp_path / "kv", _tiny(num_key_value_heads=3)))
    assert "field 'num_experts_per_tok' (3) exceeds num_local_experts (2)" in \
        _error(_write(tmp_path / "moe", _tiny(num_local_experts=2, num_experts_per_tok=3)))


def test_head_dim_given_explicitly(tmp_path):
    """5 heads do not divide 64, but an explicit head_dim makes it valid: q is 64 x (5 x 16)."""
    arch = load_architecture(_write(tmp_path / "explicit", _tiny(num_attention_heads=5, num_key_value_heads=5,
                                                                  head_dim=16)))
    assert arch.head_dim == 16 and arch.kv_bytes_per_token("fp16") == 2 * 2 * 5 * 16 * 2


def test_config_error_is_a_user_error():
    """The CLI shows UserError as one line with exit 2; LlmConfigError is also a ValueError as the API promises."""
    assert issubclass(LlmConfigError, UserError) and issubclass(LlmConfigError, ValueError)


def test_architecture_is_frozen():
    arch = load_architecture(EXAMPLES / "llama-3.2-1b")
    assert isinstance(arch, LlmArchitecture)
    with pytest.raises(AttributeError):
        arch.num_layers = 3
