"""A tiny random-initialised causal language model with its own tokenizer, made offline in about a second: what
the engine, reference-check and measurement tests (and the stored tiny calibration records) run on.

The weights are drawn from N(0, INIT_STD) with a fixed torch seed and saved as fp32 safetensors with
`save_pretrained`; the tokenizer is a byte-level BPE trained with the `tokenizers` library on TRAINING_TEXT, saved
as a PreTrainedTokenizerFast with <s>/</s>/<pad> and a plain chat template. Same arguments, same files.

Why INIT_STD = 0.1 and not transformers' 0.02: the logits must spread enough that greedy decoding is not a sea of
ties between two fp32 engines, and attention must not saturate so much that weight quantisation flips it. Measured
on the default llama (2 layers, hidden 128), 7 prompts x 16 greedy tokens: at 0.1 the top-1 token wins by a median
0.26 and at least 0.003 while ONNX Runtime GenAI fp32 and torch differ by < 4e-6, and the builder's int4 keeps a
first-step logit cosine >= 0.93; at 0.05 the smallest margin fell to 0.0001 and more generations fell into short
loops; at 0.2 int4 cosines fell to 0.5 (saturated softmax attention). tests/test_llm_engine.py checks the margin.
"""

from __future__ import annotations

import json
from pathlib import Path

INIT_STD = 0.1
FAMILIES = ("llama", "qwen2")
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
A language model reads a prompt, computes its key and value cache, and then generates one token at a time.
Latency is the time until the first token; throughput is how many tokens per second the server produces.
Batching several requests together shares the cost of reading the weights from memory between them.
On a CPU the decode step is usually limited by memory bandwidth, the prefill step by arithmetic.
Quantised weights take less memory and less bandwidth, at the price of a small loss in accuracy.
Hello, how are you today? I am fine, thank you. What would you like to know about the weather?
The weather is sunny with a light breeze, and the temperature will reach twenty degrees this afternoon.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 2.71 42 and symbols like + - * / = ( ) [ ] { } < > !
Cloud instances differ in price per hour, in cores, memory and accelerators; the advisor ranks them by cost.
"""


def make_tiny_model(dest: Path, *, family: str = "llama", layers: int = 2, hidden: int = 128, heads: int = 4,
                    kv_heads: int = 2, intermediate: int = 256, vocab_size: int = 512, max_position: int = 2048,
                    seed: int = 0) -> Path:
    """Write a random-initialised `family` causal LM ("llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM) and its
    BPE tokenizer to `dest` (created); returns `dest`. Deterministic for a seed."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {', '.join(FAMILIES)}")
    import torch
    import transformers

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    pad_id, bos_id, eos_id = (tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=max_position, initializer_range=INIT_STD, tie_word_embeddings=False,
                  bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if family == "llama":
        config, model_class = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    else:
        config, model_class = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    torch.manual_seed(seed)
    with torch.no_grad():
        model = model_class(config).to(torch.float32).eval()
        for name, parameter in model.named_parameters():
            if "norm" not in name:  # norms stay at 1: the init scale is what sets the logits' spread
                parameter.normal_(0.0, INIT_STD)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    _write_generation_config(dest, bos_id, eos_id, pad_id)
    return dest


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=1 << 20)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _write_generation_config(dest: Path, bos_id: int, eos_id: int, pad_id: int) -> None:
    """Greedy by default: the engine builder copies these search options into genai_config.json."""
    config = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": False}
    (dest / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n")
