"""Sampling from a model folder of the storage with a KV cache.

A Meta-format MTP folder decodes with the adapter's cache (`cached_latents`, head 0); a
Hugging Face-format folder (the reference, micro-ref) through transformers'
`LlamaForCausalLM` and its own cache. Both share one loop: the n samples of a prompt
form one batch, tokens are chosen greedily (temperature 0) or by temperature + top-p
sampling, each sample from its own `torch.Generator` seeded from the prompt's seed and the
sample's index (`sample_seed`), so a sample is the same whatever else is decoded beside it.
A sample ends at EOS, at the first stop sequence (cut from the text) or after
`max_new_tokens`.

Models load on the device `--device` names (`auto`: this rank's GPU when there is one), in
bfloat16 where that device supports it, else float32.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval import defaults
from weighted_mtp.storage.finished_runs import FinishedRun
from weighted_mtp.storage.layout import Layout, ModelPaths

if TYPE_CHECKING:
    import sentencepiece as spm
    import torch
    from torch import Tensor

DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:(0|[1-9][0-9]*))?")


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
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
    passes: int = 0  # model forward passes, the prompt's included (a batch's step is one)
    drafted: int = 0  # speculative decoding: draft tokens proposed by heads 1..n-1
    accepted: int = 0  # ...and accepted by head 0

    def add(self, other: DecodeStats) -> None:
        self.new_tokens += other.new_tokens
        self.seconds += other.seconds
        self.passes += other.passes
        self.drafted += other.drafted
        self.accepted += other.accepted

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_pass(self) -> float | None:
        """New tokens per forward pass: 1 for plain decoding of one sample, 1 + accepted
        drafts per pass for speculative decoding."""
        return self.new_tokens / self.passes if self.passes else None

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


def sample_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed that is a function of `seed` and `parts` alone (a task, a sample's
    index), so a sample draws the same numbers wherever and beside whatever it is decoded."""
    text = "\0".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def choose(logits: Tensor, config: SamplingConfig, generators: list[torch.Generator]) -> Tensor:
    """Next tokens `[batch]` from logits `[batch, vocab]`: argmax at temperature 0, else row
    i's draw (with `generators[i]`) from the top-p nucleus of softmax(logits / temperature)."""
    import torch

    if config.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = nucleus(torch.softmax(logits.float() / config.temperature, dim=-1), config.top_p)
    rows = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
    return torch.cat(rows)


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
        logits: Tensor = self.model.output(latents[:, -1, 0]).float()
        return logits


class HfDecoder:
    """transformers' causal LM with its own KV cache (`cache`, formerly past_key_values)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache: Any = None

    def start(self, tokens: Tensor, max_len: int) -> Tensor:
        return self._last_logits(self.model(input_ids=tokens, use_cache=True, logits_to_keep=1))

    def step(self, tokens: Tensor) -> Tensor:
        return self._last_logits(
            self.model(input_ids=tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
        )

    def _last_logits(self, out: Any) -> Tensor:
        """Logits `[batch, vocab]` at the last position; the cache kept for the next step."""
        self.cache = out.cache
        logits: Tensor = out.logits[:, -1].float()
        return logits


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
        return str(self.tokenizer.decode(ids))


def check_device(spec: str) -> str:
    """`--device` checked for its form (no torch needed), or one usage error."""
    if not _DEVICE.fullmatch(spec):
        raise UsageError(f"--device {spec!r} is not one of {DEVICES}", hint="e.g. --device cuda")
    return spec


def resolve_device(spec: str, ranks: int = 1) -> torch.device:
    """The device `--device` names, checked to exist. `auto` is this rank's GPU
    (torchrun's LOCAL_RANK) when there is one, else the CPU; `cuda` is this rank's GPU.
    Under torchrun (`ranks` > 1) every rank takes its own GPU, so `cuda:N` is refused."""
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if check_device(spec) == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: no CUDA device is available", hint="use --device cpu")
    if ":" in spec and ranks > 1:
        raise UsageError(
            f"--device {spec} under torchrun: each rank uses its own GPU (LOCAL_RANK)",
            hint="use --device cuda or auto",
        )
    index = int(spec.split(":")[1]) if ":" in spec else local
    if index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {spec}: cuda:{index} does not exist "
            f"({torch.cuda.device_count()} CUDA devices)"
        )
    return torch.device("cuda", index)


def generation_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device computes in it natively (CUDA with bf16), else float32."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def generation_folder(layout: Layout, model: str | FinishedRun) -> ModelPaths:
    """The model folder whose configs and tokenizer `model` generates with (a run's
    `final/`, or for a LoRA adapter the base model it trained on)."""
    if isinstance(model, str):
        return layout.model(model)
    return model.base if model.adapter else model.final_model


def context_length(paths: ModelPaths) -> int:
    """The longest sequence the model was built for (Meta's `max_seq_len`, Hugging Face's
    `max_position_embeddings`), read from its configs alone."""
    from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams

    if paths.params.is_file():
        return MetaParams.from_file(paths.params).max_seq_len
    found = HfLlamaConfig.from_file(paths.hf_config).others.get("max_position_embeddings")
    if type(found) is not int or found < 1:
        raise WmtpError("config.json has no max_position_embeddings", path=paths.hf_config)
    return found


def load_for_generation(
    layout: Layout, name: str, device: Any = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """A storage model folder that verifies, its weights in `dtype` (default float32) and
    its tokenizer."""
    from weighted_mtp.models.verify import verify_model

    report = verify_model(layout, name)
    if not report.ok:
        failed = report.failures()[0]
        raise WmtpError(
            f"model {name!r} does not verify: {failed.name}: {failed.detail}",
            path=layout.model(name).root,
            hint=f"run `wmtp models verify {name}` and rebuild the folder before evaluating it",
        )
    return _load_folder(name, layout.model(name), device, dtype)


def load_run_for_generation(
    run: FinishedRun, device: Any = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """A training run's `final/` model in `dtype` (default float32): its weights checked
    against their SHA256SUMS, or its LoRA adapter merged onto the base it trained from."""
    import torch

    from weighted_mtp.models.lora_merge import load_lora_merged
    from weighted_mtp.models.tokenizer import load_sentencepiece

    if not run.adapter:
        require_sha256sums(run.final_model)
        return _load_folder(run.name, run.final_model, device, dtype)
    model = load_lora_merged(run.paths.final, run.base, device, dtype or torch.float32)
    tokenizer = load_sentencepiece(run.base.tokenizer_model)
    return LoadedModel(
        run.name, "mtp", model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), str(device)
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


def _load_folder(
    name: str, paths: ModelPaths, device: Any, dtype: torch.dtype | None
) -> LoadedModel:
    """A model folder's weights in `dtype` (default float32; Meta format if it has
    params.json, else Hugging Face) and its tokenizer."""
    import torch

    from weighted_mtp.models.adapter import load_mtp_model, load_reference_model
    from weighted_mtp.models.tokenizer import load_sentencepiece

    dtype = dtype or torch.float32
    tokenizer = load_sentencepiece(paths.tokenizer_model)
    model: Any  # an MtpTransformer or a LlamaForCausalLM, as `kind` says
    if paths.params.is_file():
        kind, model = "mtp", load_mtp_model(paths.root, device=device, dtype=dtype)
    else:
        kind, model = "hf", load_reference_model(paths.root, device=device, dtype=dtype)
    return LoadedModel(
        name, kind, model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), str(device)
    )


def pack_for_rows(loaded: LoadedModel, rows_per_pass: int) -> bool:
    """Pack an MTP model's linear layers for oneDNN (`models.packed`) where each decoding
    pass puts several rows through them (speculative verification, a batch of samples):
    there MKL pays for every row. With one row its matrix-vector product is as fast or
    faster (micro-mtp: 16%), so the weights stay as they are. True if packed."""
    from weighted_mtp.models.packed import pack_linear_layers

    return loaded.kind == "mtp" and rows_per_pass > 1 and pack_linear_layers(loaded.model) > 0


def sample_prompt(
    loaded: LoadedModel, prompt: str, n: int, config: SamplingConfig
) -> tuple[list[Continuation], DecodeStats]:
    """n samples of one prompt, decoded together as one batch; sample i draws from a
    generator seeded with `sample_seed(config.seed, i)`."""
    import torch

    ids = loaded.encode_prompt(prompt)
    generators = [
        torch.Generator(device=loaded.device).manual_seed(sample_seed(config.seed, i))
        for i in range(n)
    ]
    ender = Ender(config, loaded.eos_id, loaded.decode)
    samples = [Continuation() for _ in range(n)]
    decoder = loaded.decoder()
    passes = 1  # the prompt's
    start = time.perf_counter()
    with torch.inference_mode():
        tokens = torch.tensor([ids] * n, device=loaded.device)  # [n, prompt]
        logits = decoder.start(tokens, len(ids) + config.max_new_tokens)
        while True:
            chosen = choose(logits, config, generators)  # [n]
            for sample, token in zip(samples, chosen.tolist(), strict=True):
                if sample.finish is None:
                    ender.push(sample, token)
            if all(s.finish is not None for s in samples):
                break
            logits = decoder.step(chosen[:, None])
            passes += 1
    stats = DecodeStats(sum(s.generated for s in samples), time.perf_counter() - start, passes)
    return samples, stats
