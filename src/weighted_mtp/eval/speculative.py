"""Self-speculative decoding with the MTP heads (Gloeckle et al. 2024; Stern et al. 2018).

At the last accepted position, head 0 gives the next token and heads 1..n-1 draft the
n-1 tokens after it. One forward pass over [next, drafts...] (with the KV cache) gives
head 0's prediction at each of those positions: a draft is accepted while it is what head 0
would have chosen there, and head 0's choice after the last accepted token comes for free.
Rejected positions are dropped from the cache. Under greedy decoding this yields exactly the
tokens of plain head-0 greedy decoding; with temperature > 0 drafts are accepted with
probability min(1, p/q) and a rejection is resampled from max(0, p - q) (speculative
sampling), so samples follow head 0's distribution. One sequence at a time: sequences of a
batch accept different numbers of drafts.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from weighted_mtp.eval.generate import (
    Continuation,
    DecodeStats,
    Ender,
    LoadedModel,
    SamplingConfig,
    nucleus,
)
from weighted_mtp.models.adapter import MtpCache, cached_latents

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def _distributions(logits: Tensor, config: SamplingConfig) -> Tensor:
    """`[..., vocab]` sampling distributions (temperature, top-p) for logits `[..., vocab]`."""
    import torch

    flat = logits.reshape(-1, logits.shape[-1]).float()
    probs = nucleus(torch.softmax(flat / config.temperature, dim=-1), config.top_p)
    return probs.view_as(logits)


class _Verifier:
    """Chooses next tokens and judges drafts, greedily or by speculative sampling."""

    def __init__(self, config: SamplingConfig, generator: torch.Generator) -> None:
        self.config, self.generator = config, generator
        self.greedy = config.temperature <= 0

    def pick(self, logits: Tensor) -> int:
        """A token from one position's logits `[vocab]`."""
        import torch

        if self.greedy:
            return int(logits.argmax())
        probs = _distributions(logits, self.config)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def judge(self, draft: int, target: Tensor, proposal: Tensor) -> int | None:
        """None if `draft` is accepted against head 0's logits `target` `[vocab]` (drafted
        from `proposal` `[vocab]`), else the token to emit instead."""
        import torch

        if self.greedy:
            choice = int(target.argmax())
            return None if choice == draft else choice
        p, q = _distributions(target, self.config), _distributions(proposal, self.config)
        threshold = torch.clamp(p[draft] / q[draft], max=1.0)
        if torch.rand((), generator=self.generator, device=p.device) < threshold:
            return None
        residual = torch.clamp(p - q, min=0.0)
        if float(residual.sum()) <= 0:
            residual = p
        return int(torch.multinomial(residual / residual.sum(), 1, generator=self.generator))


def speculative_sample(
    loaded: LoadedModel, prompt: str, config: SamplingConfig, seed_offset: int = 0
) -> tuple[Continuation, DecodeStats]:
    """One sample of `prompt` by self-speculative decoding (a Meta-format MTP model)."""
    import torch

    model = loaded.model
    n_heads = model.n_future_tokens
    ids = loaded.encode_prompt(prompt)
    generator = torch.Generator(device=loaded.device).manual_seed(config.seed + seed_offset)
    verifier = _Verifier(config, generator)
    ender = Ender(config, loaded.eos_id, loaded.decode)
    sample, stats = Continuation(), DecodeStats()
    start = time.perf_counter()
    with torch.inference_mode():
        cache = MtpCache(model, 1, len(ids) + config.max_new_tokens + n_heads)
        tokens = torch.tensor([ids], device=loaded.device)
        last = model.output(
            cached_latents(model, tokens, cache, n_heads)[0, -1]
        ).float()  # [heads, vocab]
        proposals = last[1:]
        next_token = verifier.pick(last[0])
        drafts = [verifier.pick(row) for row in proposals]
        while not ender.push(sample, next_token):
            room = config.max_new_tokens - len(sample.tokens)  # drafts past it are wasted
            drafts, proposals = drafts[:room], proposals[:room]
            fed = torch.tensor([[next_token, *drafts]], device=loaded.device)
            latents = cached_latents(model, fed, cache, n_heads)[0]  # [1 + drafts, heads, dim]
            verdicts = model.output(latents[:, 0]).float()  # head 0 at each: [1 + drafts, vocab]
            stats.drafted += len(drafts)
            accepted, replacement = 0, None
            for i, draft in enumerate(drafts):
                replacement = verifier.judge(draft, verdicts[i], proposals[i])
                if replacement is not None:
                    break
                accepted += 1
            stats.accepted += accepted
            ended = any(ender.push(sample, draft) for draft in drafts[:accepted])
            if ended:
                break
            cache.truncate(cache.length - len(drafts) + accepted)
            # After the last accepted token: head 0's choice, and only there the drafts.
            next_token = (
                replacement if replacement is not None else verifier.pick(verdicts[accepted])
            )
            proposals = model.output(latents[accepted, 1:]).float()  # [heads - 1, vocab]
            drafts = [verifier.pick(p) for p in proposals]
    stats.new_tokens = sample.generated
    stats.seconds = time.perf_counter() - start
    return sample, stats
