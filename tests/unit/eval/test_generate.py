"""Decoding with the KV cache (continuous batching) and self-speculative decoding on a tiny
random MTP model: checked against recomputing the whole sequence at every step, and
batched decoding against one-row decoding, bit for bit."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from reference import forward_cached

from weighted_mtp.eval.generate import (
    LoadedModel,
    PromptSamples,
    SamplingConfig,
    check_batch_size,
    check_device,
    generate,
    generation_dtype,
    nucleus,
    pack_for_decoding,
    plan_batch,
    resolve_device,
    sample_prompt,
    sample_seed,
)
from weighted_mtp.eval.speculative import speculative_sample
from weighted_mtp.models.adapter import MtpCache, MtpTransformer
from weighted_mtp.models.architecture import MetaParams
from weighted_mtp.models.packed import PackedLinear, batch_invariant, fully_packed

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["def add(a, b):", "Write a function that sorts a list.", "x = 1\ny =", "print("]


@pytest.fixture(scope="module")
def tiny(sp_model_path) -> LoadedModel:
    from weighted_mtp.models.tokenizer import load_sentencepiece

    sp = load_sentencepiece(sp_model_path)
    params = MetaParams(
        dim=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=sp.get_piece_size(),
        multiple_of=16,
        n_future_tokens=3,
    )
    torch.manual_seed(0)
    model = MtpTransformer(params).eval()
    return LoadedModel("tiny", "mtp", model, sp, sp.bos_id(), sp.eos_id(), "cpu")


def test_cached_forward_matches_the_full_forward_for_every_head(tiny) -> None:
    tokens = torch.randint(0, 500, (2, 13))
    with torch.no_grad():
        full = tiny.model(tokens)  # [2, 13, 3, vocab]
        cache = MtpCache(tiny.model, 2, 20)
        pieces = [
            forward_cached(tiny.model, tokens[:, a:b], cache, 3)
            for a, b in ((0, 6), (6, 7), (7, 11), (11, 13))
        ]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    cache.truncate(7)  # drop positions 7.. and recompute them
    with torch.no_grad():
        again = forward_cached(tiny.model, tokens[:, 7:], cache, 3)
    torch.testing.assert_close(again, full[:, 7:], rtol=1e-5, atol=1e-5)


def naive_greedy(loaded: LoadedModel, prompt: str, max_new: int) -> list[int]:
    ids = loaded.encode_prompt(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(
                loaded.model(torch.tensor([ids + out]), return_all_heads=False)[0, -1, 0].argmax()
            )
            if token == loaded.eos_id:
                break
            out.append(token)
    return out


def test_cached_greedy_equals_recomputing_everything(tiny) -> None:
    config = SamplingConfig(max_new_tokens=12, temperature=0.0)
    for prompt in PROMPTS[:2]:
        (sample,), stats = sample_prompt(tiny, prompt, 1, config)
        assert sample.tokens == naive_greedy(tiny, prompt, 12)
        assert stats.new_tokens == sample.generated


@pytest.mark.parametrize("draft_heads", [1, 2, None])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_speculative_greedy_is_token_for_token_plain_greedy(tiny, prompt, draft_heads) -> None:
    """With every number of draft heads the tiny model has (3 heads: 1 or 2 drafts, and the
    default for its shape)."""
    config = SamplingConfig(max_new_tokens=24, temperature=0.0)
    plain, _ = sample_prompt(tiny, prompt, 3, config)  # a batch of 3 identical rows
    fast, stats = speculative_sample(tiny, prompt, config, draft_heads=draft_heads)
    assert plain[0].tokens == plain[1].tokens == plain[2].tokens
    assert fast.tokens == plain[0].tokens and fast.text == plain[0].text
    assert fast.finish == plain[0].finish
    assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted


@pytest.mark.parametrize("draft_heads", [1, 2])
def test_drafts_that_head_0_agrees_with_are_accepted_and_save_passes(tiny, draft_heads) -> None:
    """With the output projection zeroed every head predicts token 0 everywhere, so every
    draft is right: all are accepted and each pass yields 1 + draft_heads tokens, through
    one call of the output projection per pass."""
    import copy

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        model.output.weight.zero_()
    agreeing = LoadedModel("agree", "mtp", model, tiny.tokenizer, tiny.bos_id, tiny.eos_id, "cpu")
    config = SamplingConfig(max_new_tokens=13, temperature=0.0)
    (plain,), plain_stats = sample_prompt(agreeing, PROMPTS[0], 1, config)
    passes: list[int] = []
    model.tok_embeddings.register_forward_hook(
        lambda _m, args, _out: passes.append(args[0].shape[1])
    )
    projections: list[tuple[int, ...]] = []
    model.output.register_forward_hook(
        lambda _m, args, _out: projections.append(tuple(args[0].shape))
    )
    fast, stats = speculative_sample(agreeing, PROMPTS[0], config, draft_heads=draft_heads)
    assert fast.tokens == plain.tokens == [0] * 13
    assert stats.drafted > 0 and stats.acceptance_rate == 1.0
    # the prompt, then passes of the next token + draft_heads drafts (fewer at the end)
    fed = 1 + draft_heads
    assert passes[1:] == [fed] * (12 // fed) + ([12 % fed] if 12 % fed else [])
    assert len(projections) == len(passes) == stats.passes
    heads = 1 + draft_heads
    assert projections[0] == (heads, 64)  # the prompt's last position, every head
    assert projections[1:] == [(n, heads, 64) for n in passes[1:]]  # every row at once
    assert plain_stats.passes == 13 and plain_stats.tokens_per_pass == 1.0
    assert stats.tokens_per_pass == 13 / len(passes)


@pytest.fixture(scope="module")
def packed(tiny) -> LoadedModel:
    """The tiny model with its linear layers packed, as `eval run` decodes on a CPU."""
    import copy

    loaded = replace(tiny, model=copy.deepcopy(tiny.model))
    if not pack_for_decoding(loaded):
        pytest.skip("no oneDNN in this torch build")
    return loaded


def test_decoding_packs_every_linear_layer_and_keeps_the_tokens(tiny, packed) -> None:
    assert fully_packed(packed.model) and not fully_packed(tiny.model)
    assert type(packed.model.output) is PackedLinear
    config = SamplingConfig(max_new_tokens=16, temperature=0.0)
    (plain,), _ = sample_prompt(tiny, PROMPTS[1], 1, config)
    (batched,), _ = sample_prompt(packed, PROMPTS[1], 1, config)
    fast, _ = speculative_sample(packed, PROMPTS[1], config)
    assert fast.tokens == plain.tokens == batched.tokens


MIXED = [*PROMPTS, "import os\n" * 6, "a", "def f(x):\n    return"]


def requests(loaded: LoadedModel, n: int, seed: int = 5) -> list[PromptSamples]:
    return [
        PromptSamples(loaded.encode_prompt(p), n, sample_seed(seed, i)) for i, p in enumerate(MIXED)
    ]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_samples_are_the_same_bits_for_every_batch_size(packed, temperature) -> None:
    """Prompts of 2 to 30 tokens, 3 samples each (24 rows): with the packed, batch-invariant
    layers of a CPU, every batch size gives every sample the same tokens, texts and ends
    as one-row decoding; rows end at different steps (stop sequences, EOS, the budget) and
    are replaced mid-flight."""
    if not batch_invariant():
        pytest.skip("this CPU's packed kernels are not batch-invariant")
    config = SamplingConfig(max_new_tokens=14, temperature=temperature, top_p=0.95, stop=(")",))
    outcomes = {}
    for batch in (1, 7, 16):
        samples, stats = generate(packed, requests(packed, 3), config, batch)
        outcomes[batch] = [[(s.tokens, s.text, s.finish) for s in task] for task in samples]
        assert stats.new_tokens == sum(s.generated for task in samples for s in task)
        assert stats.passes > len(MIXED)  # a prefill per prompt, then shared steps
    assert outcomes[1] == outcomes[7] == outcomes[16]
    finishes = {finish for task in outcomes[1] for _, _, finish in task}
    assert {"stop", "length"} <= finishes  # rows leave the batch early and at the end
    if temperature > 0:
        assert len({tuple(t) for task in outcomes[1] for t, _, _ in task}) > len(MIXED)


def test_batched_greedy_is_recomputing_everything(tiny, packed) -> None:
    """Continuous batching (7 rows, exact and fast attention) against the whole sequence
    recomputed at every step, one prompt at a time."""
    config = SamplingConfig(max_new_tokens=10, temperature=0.0)
    expected = [naive_greedy(tiny, p, 10) for p in MIXED]
    for loaded in (tiny, packed):
        samples, _ = generate(loaded, requests(loaded, 1), config, 7)
        assert [task[0].tokens for task in samples] == expected


def test_a_batch_of_steps_costs_fewer_passes(packed) -> None:
    config = SamplingConfig(max_new_tokens=8, temperature=0.0)
    _, one = generate(packed, requests(packed, 2), config, 1)
    _, many = generate(packed, requests(packed, 2), config, 16)
    assert one.new_tokens == many.new_tokens
    assert many.passes < one.passes / 4


def test_batch_sizes_are_checked_and_auto_fits_the_memory(tiny) -> None:
    from weighted_mtp.errors import UsageError

    assert check_batch_size("auto") is None and check_batch_size("16") == 16
    for bad in ("0", "-3", "x", "1.5", ""):
        with pytest.raises(UsageError, match="--batch-size must be a positive integer or auto"):
            check_batch_size(bad)
    assert plan_batch(tiny, 16, 5, 100).rows == 5  # never more rows than samples
    auto = plan_batch(tiny, None, 10_000, 100)
    assert 1 <= auto.rows <= 32 and auto.reason.startswith("auto:")


def test_sampling_is_deterministic_per_seed(tiny) -> None:
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    first, _ = sample_prompt(tiny, PROMPTS[0], 4, config)
    second, _ = sample_prompt(tiny, PROMPTS[0], 4, config)
    other, _ = sample_prompt(
        tiny, PROMPTS[0], 4, SamplingConfig(max_new_tokens=10, temperature=1.0, seed=8)
    )
    assert [s.tokens for s in first] == [s.tokens for s in second]
    assert [s.tokens for s in first] != [s.tokens for s in other]
    assert len({tuple(s.tokens) for s in first}) > 1  # rows of a batch differ
    spec_a, _ = speculative_sample(tiny, PROMPTS[0], config)
    spec_b, _ = speculative_sample(tiny, PROMPTS[0], config)
    assert spec_a.tokens == spec_b.tokens


def test_tiny_top_p_is_greedy(tiny) -> None:
    greedy, _ = sample_prompt(
        tiny, PROMPTS[1], 1, SamplingConfig(max_new_tokens=8, temperature=0.0)
    )
    nucleus_1, _ = sample_prompt(
        tiny, PROMPTS[1], 2, SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=1e-6, seed=3)
    )
    assert nucleus_1[0].tokens == nucleus_1[1].tokens == greedy[0].tokens


def test_stop_sequences_cut_the_text(tiny) -> None:
    (free,), _ = sample_prompt(
        tiny, PROMPTS[2], 1, SamplingConfig(max_new_tokens=20, temperature=0.0)
    )
    assert free.finish == "length" and len(free.tokens) == 20
    stop = free.text[len(free.text) // 2 :][:3]
    assert stop.strip()
    (cut,), _ = sample_prompt(
        tiny, PROMPTS[2], 1, SamplingConfig(max_new_tokens=20, temperature=0.0, stop=(stop,))
    )
    assert cut.finish == "stop" and cut.text == free.text[: free.text.find(stop)]
    fast, _ = speculative_sample(
        tiny, PROMPTS[2], SamplingConfig(max_new_tokens=20, temperature=0.0, stop=(stop,))
    )
    assert (fast.text, fast.finish) == (cut.text, "stop")


def test_nucleus_keeps_the_smallest_set_reaching_top_p() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]])
    kept = nucleus(probs, 0.7)
    torch.testing.assert_close(kept[0], torch.tensor([0.0, 0.5, 0.0, 0.25]) / 0.75)
    assert (kept[1] > 0).sum() == 3  # 0.25 + 0.25 < 0.7 <= 0.75
    torch.testing.assert_close(nucleus(probs, 1.0), probs)


def test_hugging_face_llamas_decode_as_one_head_mtp_models(tiny, tmp_path) -> None:
    """A Hugging Face Llama folder (grouped-query attention, tied embeddings) loads as a
    one-head MTP model: transformers' logits up to float rounding, the same greedy tokens."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from weighted_mtp.models.batched import load_llama_for_decoding

    fields = {
        "vocab_size": tiny.tokenizer.get_piece_size(),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256,
    }
    torch.manual_seed(0)
    reference = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    (tmp_path / "safetensors").mkdir()
    reference.save_pretrained(tmp_path / "safetensors")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.json").write_text(json.dumps(fields))
    model = load_llama_for_decoding(tmp_path)
    loaded = LoadedModel("hf", "hf", model, tiny.tokenizer, tiny.bos_id, tiny.eos_id, "cpu")
    ids = torch.tensor([loaded.encode_prompt(PROMPTS[0])])
    with torch.no_grad():
        ours = model(ids, return_all_heads=False)[0, :, 0]
        theirs = reference(ids).logits[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (sample,), _ = sample_prompt(
        loaded, PROMPTS[0], 1, SamplingConfig(max_new_tokens=10, temperature=0.0)
    )
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(10):
            token = int(
                reference(torch.tensor([ids[0].tolist() + expected])).logits[0, -1].argmax()
            )
            if token == loaded.eos_id:
                break
            expected.append(token)
    assert sample.tokens == expected


@pytest.mark.parametrize("speculative", [False, True])
def test_a_tasks_samples_do_not_depend_on_the_tasks_generated_before_it(
    packed, speculative
) -> None:
    """What dealing tasks out to torchrun ranks needs: each sample's draws are a function
    of (seed, task, sample index) alone."""
    from weighted_mtp.eval.prompts import FittedPrompt
    from weighted_mtp.eval.run import RunSettings, generate_tasks

    settings = RunSettings(
        dataset="humaneval",
        n=3,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=8, seed=5),
        speculative=speculative,
    )
    prompts = [FittedPrompt(f"T{i}", text, 0, 0, "whole") for i, text in enumerate(PROMPTS)]
    together = generate_tasks(packed, prompts, settings, 3).tasks
    alone = generate_tasks(packed, prompts[2:3], settings, 1).tasks
    tokens = [s.tokens for s in together[2].samples]
    assert tokens == [s.tokens for s in alone[0].samples]
    assert len({tuple(t) for t in tokens}) > 1  # the samples of a task differ
    assert [s.tokens for s in together[1].samples] != tokens
    reseeded = generate_tasks(
        packed, prompts[2:3], replace(settings, sampling=replace(settings.sampling, seed=6))
    ).tasks
    assert [s.tokens for s in reseeded[0].samples] != tokens


def test_sample_seeds_are_a_function_of_their_parts_alone() -> None:
    seeds = {sample_seed(0, task, i) for task in ("HumanEval/0", "HumanEval/1") for i in range(50)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(3, "HumanEval/0", 1) == sample_seed(3, "HumanEval/0", 1)
    assert sample_seed(3, "HumanEval/0", 1) != sample_seed(4, "HumanEval/0", 1)


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:01", "cpu:0", "cuda:-1", ""])
def test_a_device_of_another_form_is_one_usage_error(spec) -> None:
    from weighted_mtp.errors import UsageError

    with pytest.raises(UsageError, match=f"--device {spec!r} is not one of auto, cpu, cuda"):
        check_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_without_cuda_auto_is_the_cpu_in_float32_and_cuda_is_refused() -> None:
    from weighted_mtp.errors import UsageError

    assert resolve_device("auto") == torch.device("cpu")
    assert generation_dtype(torch.device("cpu")) == torch.float32
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(UsageError, match=f"--device {spec}: no CUDA device is available"):
            resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_with_cuda_auto_is_this_ranks_gpu_in_bfloat16_where_supported(monkeypatch) -> None:
    from weighted_mtp.errors import UsageError

    monkeypatch.setenv("LOCAL_RANK", "0")
    device = resolve_device("auto")
    assert device == torch.device("cuda", 0) == resolve_device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert generation_dtype(device) == expected
    with pytest.raises(UsageError, match="each rank uses its own GPU"):
        resolve_device("cuda:0", ranks=2)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_greedy_decoding_on_the_gpu_in_bfloat16_follows_the_cpu(tiny) -> None:
    """The same tiny model on the GPU in the generation dtype: greedy tokens agree with the
    float32 CPU decoding over the first tokens (bf16 rounding may split later on)."""
    import copy

    device = resolve_device("cuda")
    dtype = generation_dtype(device)
    model = copy.deepcopy(tiny.model).to(device=device, dtype=dtype)
    on_gpu = LoadedModel("gpu", "mtp", model, tiny.tokenizer, tiny.bos_id, tiny.eos_id, str(device))
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    (gpu,), _ = sample_prompt(on_gpu, PROMPTS[0], 1, config)
    (cpu,), _ = sample_prompt(tiny, PROMPTS[0], 1, config)
    assert gpu.tokens[:2] == cpu.tokens[:2]
    sampled, _ = sample_prompt(on_gpu, PROMPTS[0], 2, replace(config, temperature=1.0, seed=3))
    again, _ = sample_prompt(on_gpu, PROMPTS[0], 2, replace(config, temperature=1.0, seed=3))
    assert [s.tokens for s in sampled] == [s.tokens for s in again]


@pytest.mark.parametrize("seed", range(20))
def test_equal_length_runs_cover_each_row_once_with_neighbouring_slots(seed) -> None:
    """Exact attention's runs: against a brute-force check on random steps (rows of a few
    lengths in shuffled, sometimes repeated slots, as a one-row step repeats its row)."""
    from weighted_mtp.models.batched import _equal_length_runs

    generator = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(1, 12, (1,), generator=generator))
    slots = torch.randint(0, 8, (rows,), generator=generator).tolist()
    starts = torch.randint(3, 6, (rows,), generator=generator).tolist()
    runs = _equal_length_runs(slots, starts)
    assert [r for first, last, _, _ in runs for r in range(first, last)] == list(range(rows))
    for first, last, slot, length in runs:
        for offset, row in enumerate(range(first, last)):
            assert slots[row] == slot + offset and starts[row] + 1 == length
    for (first, last, slot, length), (_, _, next_slot, next_length) in itertools.pairwise(runs):
        # maximal: the next run's first row does not continue this one
        assert (next_slot, next_length) != (slot + last - first, length)
    if rows == 1:
        assert runs == [(0, 1, slots[0], starts[0] + 1)]
