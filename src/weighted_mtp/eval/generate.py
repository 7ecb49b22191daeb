"""Sampling from a model folder of the storage with a KV cache.

A Meta-format MTP folder decodes with the adapter's cache (`cached_latents`, head 0); a
Hugging Face-format folder (the reference, micro-ref) through transformers'
`LlamaForCausalLM` and its own cache. Both share one loop: the n samples of a prompt
form one batch, tokens are chosen greedily (temperature 0) or by temperature + top-p
sampling from a `torch.Generator` seeded per prompt, so a seed fixes every sample. A sample
ends at EOS, at the first stop sequence (cut from the text) or after `max_new_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.layout import Layout, ModelPaths

if TYPE_CHECKING:
    import sentencepiece as spm
    import torch
    from torch import Tensor

    from weighted_mtp.train.runs import FinishedRun


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 512
    temperature: float = 0.2
    top_p: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Continuation:
    """The tokens generated for one sample and why it ended (None while it runs)."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None

    @property
    def generated(self) -> int:
        """Tokens the model produced for it, EOS included."""
        return len(self.tokens) + (self.finish == "eos")


@dataclass
class DecodeStats:
    new_tokens: int = 0
    seconds: float = 0.0
    drafted: int = 0  # speculative decoding: draft tokens proposed by heads 1..n-1
    accepted: int = 0  # ...and accepted by head 0

    def add(self, other: DecodeStats) -> None:
        self.new_tokens += other.new_tokens
        self.seconds += other.seconds
        self.drafted += other.drafted
        self.accepted += other.accepted

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


class Ender:
    """Applies EOS, stop sequences and the token budget to continuations."""

    def __init__(self, config: SamplingConfig, eos_id: int, decode: Callable[[list[int]], str]):
        self.config, self.eos_id, self.decode = config, eos_id, decode

    def push(self, sample: Continuation, token: int) -> bool:
        """Add `token` to a running sample; True once the sample has ended."""
        if token == self.eos_id:
            sample.finish = "eos"
        else:
            sample.tokens.append(token)
            if self.config.stop:
                text = self.decode(sample.tokens)
                cut = min((i for s in self.config.stop if (i := text.find(s)) >= 0), default=-1)
                if cut >= 0:
                    sample.text, sample.finish = text[:cut], "stop"
            if sample.finish is None and len(sample.tokens) >= self.config.max_new_tokens:
                sample.finish = "length"
        if sample.finish in ("eos", "length"):
            sample.text = self.decode(sample.tokens)
        return sample.finish is not None


def choose(logits: Tensor, config: SamplingConfig, generator: torch.Generator) -> Tensor:
    """Next tokens `[batch]` from logits `[batch, vocab]`: argmax at temperature 0, else a
    draw from the top-p nucleus of softmax(logits / temperature)."""
    import torch

    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = nucleus(torch.softmax(logits.float() / config.temperature, dim=-1), config.top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Probabilities `[batch, vocab]` restricted to the smallest set whose mass reaches
    top_p (always at least the most likely token), renormalised."""
    import torch

    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked higher
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


class Decoder(Protocol):
    """Incremental next-token logits for a batch of equal-length prompts."""

    def start(self, tokens: Tensor, max_len: int) -> Tensor: ...

    def step(self, tokens: Tensor) -> Tensor: ...


class MtpDecoder:
    """Head-0 decoding of the MTP adapter with its KV cache."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None

    def start(self, tokens: Tensor, max_len: int) -> Tensor:
        from weighted_mtp.models.adapter import MtpCache

        self.cache = MtpCache(self.model, tokens.shape[0], max_len)
        return self.step(tokens)

    def step(self, tokens: Tensor) -> Tensor:
        """Head 0's logits `[batch, vocab]` after `tokens`, projected at the last one only."""
        from weighted_mtp.models.adapter import cached_latents

        latents = cached_latents(self.model, tokens, self.cache)  # [batch, seq, 1, dim]
        return self.model.output(latents[:, -1, 0]).float()


class HfDecoder:
    """transformers' causal LM with its own KV cache (`cache`, formerly past_key_values)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None

    def start(self, tokens: Tensor, max_len: int) -> Tensor:
        out = self.model(input_ids=tokens, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1].float()

    def step(self, tokens: Tensor) -> Tensor:
        out = self.model(input_ids=tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[:, -1].float()


@dataclass
class LoadedModel:
    name: str
    kind: str  # "mtp" (Meta format) or "hf"
    model: Any
    tokenizer: spm.SentencePieceProcessor
    bos_id: int
    eos_id: int
    device: str

    def decoder(self) -> Decoder:
        return MtpDecoder(self.model) if self.kind == "mtp" else HfDecoder(self.model)

    def encode_prompt(self, prompt: str) -> list[int]:
        return [self.bos_id, *self.tokenizer.encode(prompt)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def load_for_generation(layout: Layout, name: str, device: str = "cpu") -> LoadedModel:
    """A storage model folder that verifies, its weights in float32 and its tokenizer."""
    from weighted_mtp.models.verify import verify_model

    report = verify_model(layout, name)
    if not report.ok:
        failed = report.failures()[0]
        raise WmtpError(
            f"model {name!r} does not verify: {failed.name}: {failed.detail}",
            path=layout.model(name).root,
            hint=f"run `wmtp models verify {name}` and rebuild the folder before evaluating it",
        )
    return _load_folder(name, layout.model(name), device)


def load_run_for_generation(run: FinishedRun, device: str = "cpu") -> LoadedModel:
    """A training run's `final/` model in float32: its weights checked against their
    SHA256SUMS, or its LoRA adapter merged onto the base it trained from."""
    import torch

    from weighted_mtp.models.tokenizer import load_sentencepiece

    if not run.adapter:
        final = ModelPaths(run.name, run.paths.final)
        require_sha256sums(final)
        return _load_folder(run.name, final, device)
    from weighted_mtp.train.final import load_adapter_merged

    model = load_adapter_merged(run, device, torch.float32)
    tokenizer = load_sentencepiece(run.base.tokenizer_model)
    return LoadedModel(
        run.name, "mtp", model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), device
    )


def require_sha256sums(paths: ModelPaths) -> None:
    """The weights are the bytes their SHA256SUMS names (written with them), or one error."""
    from weighted_mtp.storage.hashing import check_sha256sums

    for name, ok, reason in check_sha256sums(paths.sha256sums):
        if not ok:
            raise WmtpError(
                f"{name} is {reason} since it was saved (SHA256SUMS)",
                path=paths.sha256sums.parent / name,
                hint="the run's final model was modified; train it again",
            )


def _load_folder(name: str, paths: ModelPaths, device: str) -> LoadedModel:
    """A model folder's weights in float32 (Meta format if it has params.json, else Hugging
    Face) and its tokenizer."""
    import torch

    from weighted_mtp.models.adapter import load_mtp_model, load_reference_model
    from weighted_mtp.models.tokenizer import load_sentencepiece

    tokenizer = load_sentencepiece(paths.tokenizer_model)
    model: Any  # an MtpTransformer or a LlamaForCausalLM, as `kind` says
    if paths.params.is_file():
        kind, model = "mtp", load_mtp_model(paths.root, device=device, dtype=torch.float32)
    else:
        kind, model = "hf", load_reference_model(paths.root, device=device, dtype=torch.float32)
    return LoadedModel(name, kind, model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), device)


def sample_prompt(
    loaded: LoadedModel, prompt: str, n: int, config: SamplingConfig
) -> tuple[list[Continuation], DecodeStats]:
    """n samples of one prompt, decoded together as one batch."""
    import torch

    ids = loaded.encode_prompt(prompt)
    generator = torch.Generator(device=loaded.device).manual_seed(config.seed)
    ender = Ender(config, loaded.eos_id, loaded.decode)
    samples = [Continuation() for _ in range(n)]
    decoder = loaded.decoder()
    start = time.perf_counter()
    with torch.inference_mode():
        tokens = torch.tensor([ids] * n, device=loaded.device)  # [n, prompt]
        logits = decoder.start(tokens, len(ids) + config.max_new_tokens)
        while True:
            chosen = choose(logits, config, generator)  # [n]
            for sample, token in zip(samples, chosen.tolist(), strict=True):
                if sample.finish is None:
                    ender.push(sample, token)
            if all(s.finish is not None for s in samples):
                break
            logits = decoder.step(chosen[:, None])
    stats = DecodeStats(sum(s.generated for s in samples), time.perf_counter() - start)
    return samples, stats
