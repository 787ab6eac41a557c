"""The ONNX Runtime GenAI engine on a tiny random llama, for real: the builder (fp32, int4), the check against
transformers, the step API the server drives, the local measurement and the engine artifact."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import onnx
import pytest

from advisor.llm.engine import EngineError, OrtGenaiEngine, build_genai_model
from advisor.llm.engine_api import GenerationRequest
from advisor.llm.engine_artifact import load_engine_artifact, write_engine_artifact
from advisor.llm.measure_local import LocalMeasureSettings, measure_local
from advisor.llm.measurement_record import LlmMeasurement
from advisor.llm.reference import COSINE_FLOOR, DEFAULT_PROMPTS, check_against_reference
from advisor.llm.tiny_model import make_tiny_model
from advisor.runtime import check_artifact

pytest_plugins = ["llm_models"]

PROMPT = "The quick brown fox jumps over"


def _ops(built) -> set[str]:
    return {node.op_type for node in onnx.load(str(built.folder / "model.onnx"), load_external_data=False).graph.node}


def _run(engine, requests: dict[str, GenerationRequest], max_steps: int = 100) -> dict[str, list]:
    """Drive the engine until every request finished; returns each request's events."""
    ids = {engine.add(request): key for key, request in requests.items()}
    events: dict[str, list] = {key: [] for key in requests}
    for _ in range(max_steps):
        for event in engine.step():
            events[ids[event.sequence_id]].append(event)
        if not engine.active:
            return events
    raise AssertionError(f"not finished after {max_steps} steps")


# ---- the tiny model ----


def test_tiny_model_is_deterministic_and_decodes_with_clear_margins(tiny_llama, tmp_path):
    import torch
    import transformers

    again = make_tiny_model(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    margins, generated = [], []
    for prompt in DEFAULT_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=0)
        margins += [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        generated += out.sequences[0, ids.shape[1]:].tolist()
    # fp32 engines differ by ~1e-5 in these logits: a greedy pick won by 1e-3 cannot flip
    assert min(margins) > 1e-3, min(margins)
    assert len(set(generated)) > len(generated) // 3  # not one token over and over


# ---- building ----


def test_builder_makes_fp32_and_int4_models(tiny_llama, tiny_llama_fp32, tiny_llama_int4):
    for built, precision in ((tiny_llama_fp32, "fp32"), (tiny_llama_int4, "int4-wo")):
        assert built.precision == precision and built.source == tiny_llama.resolve()
        assert (built.folder / "genai_config.json").is_file() and (built.folder / "tokenizer.json").is_file()
        assert built.build_s > 0 and "onnxruntime_genai.models.builder" in built.builder_command
        assert str(built.folder) in built.builder_command and "-e" in built.builder_command
        assert built.folder.with_name(built.folder.name + ".build.log").is_file()
        assert not built.folder.with_name(built.folder.name + ".partial").exists()
    assert "MatMulNBits" in _ops(tiny_llama_int4) and "MatMulNBits" not in _ops(tiny_llama_fp32)
    assert tiny_llama_int4.builder_command[tiny_llama_int4.builder_command.index("-p") + 1] == "int4"


def test_build_refuses_folders_without_config_or_tokenizer_and_unknown_precisions(tiny_llama, tmp_path):
    no_config = tmp_path / "no-config"
    shutil.copytree(tiny_llama, no_config)
    (no_config / "config.json").unlink()
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    cases = ((no_config, "fp32", "no config.json"), (no_tokenizer, "fp32", "no tokenizer"),
             (tiny_llama, "bf16", "offers fp32, int4-wo, int8-wo"), (tmp_path / "missing", "fp32", "not a folder"))
    for folder, precision, words in cases:
        with pytest.raises(EngineError) as error:
            build_genai_model(folder, tmp_path / "out", precision)
        assert words in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_failing_builder_run_is_one_line_with_its_error(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "model.safetensors").unlink()  # config and tokenizer are there, the weights are not
    with pytest.raises(EngineError) as error:
        build_genai_model(broken, tmp_path / "out", "fp32", timeout_s=300)
    message = str(error.value)
    assert message.startswith("the onnxruntime-genai builder failed") and "\n" not in message, message
    assert "out.build.log" in message and not (tmp_path / "out").exists()


# ---- the reference check ----


def test_fp32_build_generates_exactly_what_transformers_generates(tiny_llama, tiny_llama_fp32):
    check = check_against_reference(tiny_llama, tiny_llama_fp32, new_tokens=8)
    assert check.passed, check
    assert check.first_mismatch is None and check.prompts == len(DEFAULT_PROMPTS)
    assert check.tokens_compared == 8 * len(DEFAULT_PROMPTS)
    assert "identical" in check.rule


def test_int4_build_is_within_its_stated_rule(tiny_llama, tiny_llama_int4):
    check = check_against_reference(tiny_llama, tiny_llama_int4)
    assert check.passed, check
    assert f"cosine similarity to transformers fp32 >= {COSINE_FLOOR['int4-wo']:g}" in check.rule
    assert check.tokens_compared == len(DEFAULT_PROMPTS)


def test_other_weights_fail_the_check(tiny_llama_other_weights, tiny_llama_fp32, tiny_llama_int4):
    for built in (tiny_llama_fp32, tiny_llama_int4):
        check = check_against_reference(tiny_llama_other_weights, built)
        assert not check.passed, check
        assert check.first_mismatch.startswith("prompt 0"), check.first_mismatch


# ---- the step API ----


def test_engine_serves_interleaved_sequences_like_single_ones(tiny_llama_fp32):
    engine = OrtGenaiEngine(tiny_llama_fp32.folder, max_batch_size=3, name="tiny")
    assert (engine.name, engine.model_name, engine.max_context) == ("onnxruntime-genai", "tiny", 2048)
    prompts = {key: tuple(engine.encode(text)) for key, text in
               (("a", PROMPT), ("b", "Hello, how are you today?"), ("c", "Numbers: 0 1 2 3"))}
    alone = {key: [e.token_id for e in _run(engine, {key: GenerationRequest(ids, 6, ignore_eos=True)})[key]]
             for key, ids in prompts.items()}
    # together, with different lengths, and "c" joining after two steps
    ids_a = engine.add(GenerationRequest(prompts["a"], 6, ignore_eos=True))
    ids_b = engine.add(GenerationRequest(prompts["b"], 3, ignore_eos=True))
    steps = [engine.step(), engine.step()]
    assert [[e.sequence_id for e in step] for step in steps] == [[ids_a, ids_b], [ids_a, ids_b]]
    ids_c = engine.add(GenerationRequest(prompts["c"], 6, ignore_eos=True))
    third = engine.step()
    assert [e.sequence_id for e in third] == [ids_a, ids_b, ids_c]  # "c"'s prompt ran in the very next step
    assert third[1].finished and third[1].finish_reason == "length" and engine.active == 2
    while engine.active:
        steps.append(engine.step())
    events = [e for step in [*steps[:2], third, *steps[2:]] for e in step]
    for key, sequence_id in (("a", ids_a), ("b", ids_b), ("c", ids_c)):
        mine = [e for e in events if e.sequence_id == sequence_id]
        assert [e.token_id for e in mine] == alone[key][:len(mine)]
        assert len(mine) == (3 if key == "b" else 6)
        assert [e.finished for e in mine] == [False] * (len(mine) - 1) + [True]
        assert mine[-1].finish_reason == "length" and all(e.finish_reason is None for e in mine[:-1])
    assert engine.step() == []


def test_cancel_drops_a_sequence_and_limits_are_one_line_errors(tiny_llama_fp32):
    engine = OrtGenaiEngine(tiny_llama_fp32.folder, max_batch_size=2)
    ids = tuple(engine.encode(PROMPT))
    keep = engine.add(GenerationRequest(ids, 4, ignore_eos=True))
    drop = engine.add(GenerationRequest(ids, 4, ignore_eos=True))
    with pytest.raises(EngineError, match="full"):
        engine.add(GenerationRequest(ids, 4))
    engine.step()
    engine.cancel(drop)
    engine.cancel(drop)
    engine.cancel(12345)
    assert engine.active == 1
    rest = [engine.step() for _ in range(3)]
    assert all([e.sequence_id for e in step] == [keep] for step in rest) and rest[-1][0].finished
    with pytest.raises(EngineError, match="exceed the model's context of 2048"):
        engine.add(GenerationRequest((5,) * 2040, 9))
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.add(GenerationRequest((5, 512), 2))


def test_end_of_sequence_stops_unless_ignored(tiny_llama_fp32, tmp_path):
    """The model's greedy third token made its end-of-sequence token: without ignore_eos the sequence stops there
    ("stop"); with it, the token is masked and the sequence runs to its length."""
    engine = OrtGenaiEngine(tiny_llama_fp32.folder)
    ids = tuple(engine.encode(PROMPT))
    tokens = [e.token_id for e in _run(engine, {"x": GenerationRequest(ids, 5, ignore_eos=True)})["x"]]
    folder = tmp_path / "eos"
    shutil.copytree(tiny_llama_fp32.folder, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = tokens[2]
    (folder / "genai_config.json").write_text(json.dumps(config))
    engine = OrtGenaiEngine(folder)
    stopped = _run(engine, {"x": GenerationRequest(ids, 5)})["x"]
    assert [e.token_id for e in stopped] == tokens[:3] and stopped[-1].finish_reason == "stop"
    ignored = _run(engine, {"x": GenerationRequest(ids, 5, ignore_eos=True)})["x"]
    assert len(ignored) == 5 and ignored[-1].finish_reason == "length" and ignored[2].token_id != tokens[2]


def test_decoder_reassembles_the_tokenizers_text(tiny_llama_fp32):
    engine = OrtGenaiEngine(tiny_llama_fp32.folder, max_batch_size=len(DEFAULT_PROMPTS))
    text = "Hello, ünïcödé 日本 and 3.14"  # multi-byte characters split over byte-level tokens
    decoder = engine.new_decoder()
    pieces = [decoder.add(t) for t in engine.encode(text)]
    assert "".join(pieces) == text and "" in pieces  # held back while a character was incomplete
    outputs = _run(engine, {p: GenerationRequest(tuple(engine.encode(p)), 24, ignore_eos=True)
                            for p in DEFAULT_PROMPTS})
    for events in outputs.values():
        tokens = [e.token_id for e in events]
        decoder = engine.new_decoder()
        streamed = "".join(decoder.add(t) for t in tokens)
        whole = engine.decode(tokens)
        # a random model emits stray bytes: all of them show as U+FFFD, except an incomplete one at the very end
        assert whole.startswith(streamed) and set(whole[len(streamed):]) <= {"\ufffd"}, (streamed, whole)


def test_chat_prompt_uses_the_template_and_one_bos(tiny_llama_fp32):
    engine = OrtGenaiEngine(tiny_llama_fp32.folder)
    prompt = engine.chat_prompt([{"role": "user", "content": "hi"}])
    assert prompt == "<s><|user|>\nhi\n<|assistant|>\n"
    assert engine.encode(prompt).count(1) == 1 and engine.encode(prompt)[0] == 1


# ---- local measurement ----


def test_measure_local_on_the_tiny_model(tiny_llama, tiny_llama_fp32):
    started = time.monotonic()
    result = measure_local(tiny_llama_fp32, tiny_llama, LocalMeasureSettings())
    elapsed = time.monotonic() - started
    print(f"measure_local on the tiny llama: {elapsed:.1f} s ({result.wall_s:.1f} s reported)")
    assert elapsed < 120 and 0 < result.wall_s <= elapsed + 0.5
    record = result.record
    steps = {(s.kind, s.batch, s.prompt_tokens or s.context): s for s in record.steps}
    for batch in (1, 2, 4):
        assert steps[("prefill", batch, 128)].ms > steps[("prefill", batch, 32)].ms
        for context in (32 + 8, 128 + 8):
            step = steps[("decode", batch, context)]
            assert step.samples == 5 * 15 and step.ms > 0
    assert all(s.ms_interval[0] <= s.ms <= s.ms_interval[1] for s in record.steps)
    for stats, samples in ((result.ttft_ms, 2 * 5), (result.itl_ms, 2 * 5 * 15)):
        assert stats["samples"] == samples and 0 < stats["p50"] <= stats["p99"]
        assert stats["interval_p50"][0] <= stats["p50"] <= stats["interval_p50"][1]
        assert set(stats["by_prompt_tokens"]) == {"32", "128"}
    assert result.ttft_ms["by_prompt_tokens"]["128"]["p50"] > 0
    assert result.peak_memory_mib > 0 and result.rss_peak_mib > result.rss_baseline_mib > 0
    assert record.engine == "onnxruntime-genai" and record.precision == "fp32" and record.tensor_parallel == 1
    assert set(record.versions) == {"onnxruntime", "onnxruntime-genai", "python"}
    assert record.hardware.kind == "cpu" and record.hardware.detail["peaks_from"]
    assert record.work.kv_bytes_per_token == 2 * 2 * 2 * 32 * 4  # K and V, 2 layers, 2 KV heads, head_dim 32, fp32
    assert LlmMeasurement.from_dict(json.loads(json.dumps(record.to_dict()))) == record


# ---- the artifact ----


def test_engine_artifact_is_verified_loaded_and_refused_when_tampered(tiny_llama, tiny_llama_fp32, tmp_path):
    check = check_against_reference(tiny_llama, tiny_llama_fp32, prompts=[PROMPT], new_tokens=4)
    folder = write_engine_artifact(tiny_llama_fp32, tmp_path / "artifact", served_model_name="tiny-llama",
                                   check=check, measured={"ttft_ms_p50": 1.0})
    assert folder.with_name("artifact.tar.gz").is_file() and not folder.with_name("artifact.partial").exists()
    manifest = check_artifact(folder)
    assert (manifest["schema"], manifest["kind"], manifest["backend"], manifest["precision"]) == \
        ("advisor.artifact/v1", "llm-engine", "onnxruntime-genai", "fp32")
    assert set(manifest["files"]) == {f"model/{p.name}" for p in tiny_llama_fp32.folder.iterdir()}
    assert manifest["reference_check"]["passed"] and manifest["requirements"][0] == "onnxruntime-genai==0.18.0"
    engine = load_engine_artifact(folder, max_batch_size=2)
    assert engine.model_name == "tiny-llama" and engine.max_batch_size == 2
    served = _run(engine, {"x": GenerationRequest(tuple(engine.encode(PROMPT)), 4, ignore_eos=True)})["x"]
    direct = OrtGenaiEngine(tiny_llama_fp32.folder)
    expected = _run(direct, {"x": GenerationRequest(tuple(direct.encode(PROMPT)), 4, ignore_eos=True)})["x"]
    assert [e.token_id for e in served] == [e.token_id for e in expected]
    data = folder / "model" / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(EngineError, match="model/model.onnx.data was modified") as error:
        load_engine_artifact(folder)
    assert "\n" not in str(error.value)


def test_prompt_logits_are_the_prefills(tiny_llama_fp32):
    engine = OrtGenaiEngine(tiny_llama_fp32.folder)
    ids = engine.encode(PROMPT)
    logits = engine.prompt_logits(ids)
    first = _run(engine, {"x": GenerationRequest(tuple(ids), 1)})["x"][0].token_id
    assert logits.shape == (512,) and int(np.argmax(logits)) == first
