"""Self-speculative decoding with the MTP heads (Gloeckle et al. 2024; Stern et al. 2018).

At the last accepted position, head 0 gives the next token and draft heads 1..K draft the
K tokens after it. One forward pass over [next, drafts...] (with the KV cache) gives head
0's prediction at each of those positions: a draft is accepted while it is what head 0
would have chosen there, and head 0's choice after the last accepted token comes for free.
Rejected positions are dropped from the cache. Under greedy decoding this yields exactly the
tokens of plain head-0 greedy decoding; with temperature > 0 drafts are accepted with
probability min(1, p/q) and a rejection is resampled from max(0, p - q) (speculative
sampling), so samples follow head 0's distribution. One sequence at a time: sequences of a
batch accept different numbers of drafts. Where there are many sequences to decode,
continuous batching (`eval.generate.generate`) gains more (docs/evaluation-decoding.md).

When it pays: a pass runs the trunk and K + 1 head blocks over K + 1 tokens where a plain
step runs the trunk and one head block over one token. Where decoding is memory-bound (the
weights are read once per pass however many rows go through them: a 7B model, or any model
whose weights do not fit in cache) a pass costs little more than a step if the trunk is
much larger than the head blocks, and each pass yields 1 + accepted drafts tokens. Where
the weights sit in cache (micro models on a CPU) a pass costs about K + 1 steps or more, and
speculation is slower than plain decoding whatever the acceptance.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from weighted_mtp.errors import UsageError
from weighted_mtp.eval.generate import (
    Continuation,
    DecodeStats,
    Ender,
    LoadedModel,
    SamplingConfig,
    nucleus,
)
from weighted_mtp.models.adapter import MtpCache, cached_latents
from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes

if TYPE_CHECKING:
    import torch
    from torch import Tensor

# The chance assumed, for choosing the default number of draft heads, that a draft is
# accepted when the drafts before it were: draft k counts only if drafts 1..k-1 did, so
# with K heads a pass yields 1 + a + ... + a^K tokens on average. Pass --draft-heads to
# use a measured acceptance instead (results.json reports it).
ASSUMED_ACCEPTANCE = 0.5


def _parameters(params: MetaParams) -> tuple[int, int, int]:
    """Parameters of the trunk, of one head block and of the output projection."""
    shapes = meta_tensor_shapes(params)

    def count(*prefixes: str) -> int:
        return sum(math.prod(shape) for name, shape in shapes.items() if name.startswith(prefixes))

    trunk = count(*(f"layers.{i}." for i in range(params.n_trunk_layers)))
    return trunk, count(f"layers.{params.n_trunk_layers}."), count("output.")


def pass_cost(params: MetaParams, draft_heads: int) -> float:
    """A verification pass with `draft_heads` drafts relative to a plain step, where decoding
    is memory-bound (time proportional to the weights read): trunk, draft_heads + 1 head
    blocks and the output projection against trunk, one head block and the output."""
    trunk, head, output = _parameters(params)
    return (trunk + (draft_heads + 1) * head + output) / (trunk + head + output)


def expected_tokens_per_pass(draft_heads: int, acceptance: float) -> float:
    """1 + a + ... + a^K: the next token, plus draft k when drafts 1..k are all accepted."""
    return sum(acceptance**k for k in range(draft_heads + 1))


def default_draft_heads(params: MetaParams, acceptance: float = ASSUMED_ACCEPTANCE) -> int:
    """The number of draft heads (1..n_future_tokens - 1) with the most expected tokens per
    unit of pass cost under the memory-bound cost model: all three of the 7B's extra heads
    (its 28-block trunk makes a head block cheap), one for a model without a trunk."""
    choices = range(1, params.n_future_tokens)
    return max(
        choices,
        key=lambda k: expected_tokens_per_pass(k, acceptance) / pass_cost(params, k),
        default=1,
    )


def draft_heads_for(params: MetaParams, requested: int | None) -> int:
    """`requested` if a model of shape `params` has that many heads beyond head 0, else one
    clear error; None: the default for the model's shape. Needs only params.json, so it is
    checked before any weights load."""
    available = params.n_future_tokens - 1
    if available < 1:
        raise UsageError(
            "--speculative needs a model with more than one prediction head; this one has 1",
            hint="decode without --speculative",
        )
    if requested is None:
        return default_draft_heads(params)
    if not 1 <= requested <= available:
        raise UsageError(
            f"--draft-heads must be between 1 and {available} for this model "
            f"({params.n_future_tokens} prediction heads), not {requested}"
        )
    return requested


def _distributions(logits: Tensor, config: SamplingConfig) -> Tensor:
    """`[rows, vocab]` sampling distributions (temperature, top-p) for logits `[rows, vocab]`."""
    import torch

    return nucleus(torch.softmax(logits.float() / config.temperature, dim=-1), config.top_p)


class _Verifier:
    """Chooses tokens and judges drafts, greedily or by speculative sampling."""

    def __init__(self, config: SamplingConfig, generator: torch.Generator) -> None:
        self.config, self.generator = config, generator
        self.greedy = config.temperature <= 0

    def choose(self, logits: Tensor) -> list[int]:
        """One token per row of `logits` `[rows, vocab]`."""
        import torch

        if self.greedy:
            return [int(t) for t in logits.argmax(dim=-1).tolist()]
        probs = _distributions(logits, self.config)
        return [int(t) for t in torch.multinomial(probs, 1, generator=self.generator)[:, 0]]

    def verify(self, drafts: list[int], verdicts: Tensor, proposals: Tensor) -> tuple[int, int]:
        """How many of `drafts` head 0 accepts, and the token after them: the replacement of
        the first rejected draft, or head 0's choice after the last one. `verdicts`
        `[len(drafts) + 1, vocab]` are head 0's logits at each fed position, `proposals`
        `[len(drafts), vocab]` the logits the drafts were drawn from."""
        if self.greedy:
            chosen = self.choose(verdicts)
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == chosen[accepted]:
                accepted += 1
            return accepted, chosen[accepted]
        return self._speculative_sampling(drafts, verdicts, proposals)

    def _speculative_sampling(
        self, drafts: list[int], verdicts: Tensor, proposals: Tensor
    ) -> tuple[int, int]:
        """Leviathan et al. 2023: accept draft i with probability min(1, p_i / q_i), else
        draw from max(0, p - q) normalised; all accepted: draw from p after the last."""
        import torch

        p = _distributions(verdicts, self.config)  # [drafts + 1, vocab]
        q = _distributions(proposals, self.config)  # [drafts, vocab]
        for i, draft in enumerate(drafts):
            threshold = torch.clamp(p[i, draft] / q[i, draft], max=1.0)
            if torch.rand((), generator=self.generator, device=p.device) < threshold:
                continue
            residual = torch.clamp(p[i] - q[i], min=0.0)
            if float(residual.sum()) <= 0:
                residual = p[i]
            drawn = torch.multinomial(residual / residual.sum(), 1, generator=self.generator)
            return i, int(drawn)
        return len(drafts), int(torch.multinomial(p[-1], 1, generator=self.generator))


def speculative_sample(
    loaded: LoadedModel,
    prompt: str,
    config: SamplingConfig,
    draft_heads: int | None = None,
) -> tuple[Continuation, DecodeStats]:
    """One sample of `prompt` by self-speculative decoding with `draft_heads` drafts per
    pass (None: `default_draft_heads`) from a Meta-format MTP model."""
    import torch

    model = loaded.model
    n_heads = draft_heads_for(model.params, draft_heads) + 1  # head 0 and the draft heads
    ids = loaded.encode_prompt(prompt)
    generator = torch.Generator(device=loaded.device).manual_seed(config.seed)
    verifier = _Verifier(config, generator)
    ender = Ender(config, loaded.eos_id, loaded.decode)
    sample, stats = Continuation(), DecodeStats(passes=1)  # the prompt's pass
    start = time.perf_counter()
    with torch.inference_mode():
        cache = MtpCache(model, 1, len(ids) + config.max_new_tokens + n_heads)
        tokens = torch.tensor([ids], device=loaded.device)
        last = model.output(cached_latents(model, tokens, cache, n_heads)[0, -1])  # [heads, vocab]
        next_token = verifier.choose(last[:1])[0]
        proposals = last[1:]
        drafts = verifier.choose(proposals)
        while not ender.push(sample, next_token):
            room = config.max_new_tokens - len(sample.tokens)  # drafts past it are wasted
            drafts, proposals = drafts[:room], proposals[:room]
            fed = torch.tensor([[next_token, *drafts]], device=loaded.device)
            latents = cached_latents(model, fed, cache, n_heads)[0]  # [1 + drafts, heads, dim]
            logits = model.output(latents)  # one projection: [1 + drafts, heads, vocab]
            stats.passes += 1
            stats.drafted += len(drafts)
            accepted, next_token = verifier.verify(drafts, logits[:, 0], proposals)
            stats.accepted += accepted
            if any(ender.push(sample, draft) for draft in drafts[:accepted]):
                break
            cache.truncate(cache.length - len(drafts) + accepted)
            # Heads 1.. at the last accepted position draft the tokens after next_token.
            proposals = logits[accepted, 1:]  # [heads - 1, vocab]
            drafts = verifier.choose(proposals)
    stats.new_tokens = sample.generated
    stats.seconds = time.perf_counter() - start
    return sample, stats
