"""Decoding with the KV cache and self-speculative decoding on a tiny random MTP model:
checked against recomputing the whole sequence at every step."""

from __future__ import annotations

import pytest
import torch

from weighted_mtp.eval.generate import (
    LoadedModel,
    SamplingConfig,
    nucleus,
    sample_prompt,
)
from weighted_mtp.eval.speculative import speculative_sample
from weighted_mtp.models.adapter import MtpCache, MtpTransformer, forward_cached
from weighted_mtp.models.architecture import MetaParams

PROMPTS = ["def add(a, b):", "Write a function that sorts a list.", "x = 1\ny =", "print("]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: torch's intra-op threads only cost synchronisation on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.parametrize("prompt", PROMPTS)
def test_speculative_greedy_is_token_for_token_plain_greedy(tiny, prompt) -> None:
    config = SamplingConfig(max_new_tokens=24, temperature=0.0)
    plain, _ = sample_prompt(tiny, prompt, 3, config)  # a batch of 3 identical rows
    fast, stats = speculative_sample(tiny, prompt, config)
    assert plain[0].tokens == plain[1].tokens == plain[2].tokens
    assert fast.tokens == plain[0].tokens and fast.text == plain[0].text
    assert fast.finish == plain[0].finish
    assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted


def test_drafts_that_head_0_agrees_with_are_accepted_and_save_passes(tiny) -> None:
    """With the output projection zeroed every head predicts token 0 everywhere, so every
    draft is right: all are accepted and each pass yields n_heads tokens."""
    import copy

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        model.output.weight.zero_()
    agreeing = LoadedModel("agree", "mtp", model, tiny.tokenizer, tiny.bos_id, tiny.eos_id, "cpu")
    config = SamplingConfig(max_new_tokens=13, temperature=0.0)
    (plain,), _ = sample_prompt(agreeing, PROMPTS[0], 1, config)
    passes = []
    model.tok_embeddings.register_forward_hook(
        lambda _m, args, _out: passes.append(args[0].shape[1])
    )
    fast, stats = speculative_sample(agreeing, PROMPTS[0], config)
    assert fast.tokens == plain.tokens == [0] * 13
    assert stats.drafted > 0 and stats.acceptance_rate == 1.0
    assert len(passes) == 1 + 4  # the prompt, then 4 passes of next token + 2 drafts


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


def test_hugging_face_models_decode_through_their_own_cache(tiny) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=tiny.tokenizer.get_piece_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    loaded = LoadedModel("hf", "hf", model, tiny.tokenizer, tiny.bos_id, tiny.eos_id, "cpu")
    (sample,), _ = sample_prompt(
        loaded, PROMPTS[0], 1, SamplingConfig(max_new_tokens=10, temperature=0.0)
    )
    ids = loaded.encode_prompt(PROMPTS[0])
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(10):
            token = int(model(torch.tensor([ids + expected])).logits[0, -1].argmax())
            if token == loaded.eos_id:
                break
            expected.append(token)
    assert sample.tokens == expected
