"""Sampling from a model folder of the storage with a KV cache, in continuous batches.

A Meta-format MTP folder decodes with head 0; a Hugging Face-format Llama (the reference,
micro-ref) is loaded as a one-head MTP model (`models.batched.load_llama_for_decoding`),
so both go through one engine (`generate`): up to `batch` rows in flight across prompts
and their samples, each prompt prefilled once alone and copied into its samples' rows, a
row that ends replaced by the next sample at once (`models.batched`). Tokens are chosen
greedily (temperature 0) or by temperature + top-p sampling, each sample from its own
`torch.Generator` seeded from its prompt's seed and the sample's index (`sample_seed`).
On a CPU in float32 the model's layers are packed and batch-invariant, so a sample is the
same bits whatever is decoded beside it and whatever the batch size. A sample ends at
EOS, at the first stop sequence (cut from the text) or after `max_new_tokens`.

Models load on the device `--device` names (`auto`: this rank's GPU when there is one), in
bfloat16 where that device supports it, else float32.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from weighted_mtp.errors import UsageError, WmtpError
from weighted_mtp.eval import defaults
from weighted_mtp.storage.finished_runs import FinishedRun
from weighted_mtp.storage.layout import Layout, ModelPaths

if TYPE_CHECKING:
    import sentencepiece as spm
    import torch
    from torch import Tensor

    from weighted_mtp.models.adapter import MtpTransformer

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


@dataclass
class LoadedModel:
    name: str
    kind: str  # the folder's format: "mtp" (Meta) or "hf" (decoded as a one-head MTP model)
    model: MtpTransformer
    tokenizer: spm.SentencePieceProcessor
    bos_id: int
    eos_id: int
    device: str

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
    params.json, else a Hugging Face Llama, as a one-head MTP model) and its tokenizer."""
    import torch

    from weighted_mtp.models.adapter import load_mtp_model
    from weighted_mtp.models.batched import load_llama_for_decoding
    from weighted_mtp.models.tokenizer import load_sentencepiece

    dtype = dtype or torch.float32
    tokenizer = load_sentencepiece(paths.tokenizer_model)
    if paths.params.is_file():
        kind, model = "mtp", load_mtp_model(paths.root, device=device, dtype=dtype)
    else:
        kind, model = "hf", load_llama_for_decoding(paths.root, device=device, dtype=dtype)
    return LoadedModel(
        name, kind, model, tokenizer, tokenizer.bos_id(), tokenizer.eos_id(), str(device)
    )


def pack_for_decoding(loaded: LoadedModel) -> bool:
    """Pack the model's linear layers for oneDNN (`models.packed`) where that works (float32
    on a CPU): a batched step puts its rows through every weight once, where MKL pays for
    each row again, and packed layers are batch-invariant (`batch_invariant`), which makes
    a sample the same bits whatever is decoded beside it. One-row steps run two rows (the
    packed kernels round one row differently): a layer then costs 1.1-1.5x MKL's one row.
    True if packed."""
    from weighted_mtp.models.packed import pack_linear_layers

    return pack_linear_layers(loaded.model) > 0


@dataclass(frozen=True)
class PromptSamples:
    """`n` samples of one prompt (`ids`, BOS included); sample i draws from a generator
    seeded with `sample_seed(seed, i)`."""

    ids: list[int]
    n: int
    seed: int


@dataclass(frozen=True)
class BatchPlan:
    """How many rows decode together, and why (`auto`: what it was sized from)."""

    rows: int
    reason: str


AUTO_BATCH_CAP = {"cpu": 32, "cuda": 256}  # beyond these a step gains nothing more per row
AUTO_MEMORY_SHARE = 0.5  # of the free memory, for the cache (activations take the rest)


def check_batch_size(spec: str) -> int | None:
    """`--batch-size`: a positive integer, or `auto` (None); else one usage error."""
    if spec == "auto":
        return None
    if not spec.isdigit() or int(spec) < 1:
        raise UsageError(
            f"--batch-size must be a positive integer or auto, not {spec!r}",
            hint="e.g. --batch-size 16, or auto to size it from the free memory",
        )
    return int(spec)


def plan_batch(
    loaded: LoadedModel, requested: int | None, samples: int, positions: int
) -> BatchPlan:
    """The rows in flight: `requested`, or for `auto` (None) as many as the cache of
    `positions` positions per row fits in half the device's free memory (CPU: available
    RAM), at most `AUTO_BATCH_CAP`; never more than the `samples` to generate."""
    from weighted_mtp.models.batched import SlotCache

    if requested is not None:
        return BatchPlan(max(1, min(requested, samples)), f"--batch-size {requested}")
    device = loaded.model.tok_embeddings.weight.device
    free = _free_memory(device)
    per_row = SlotCache.bytes_per_token(loaded.model) * positions
    cap = AUTO_BATCH_CAP["cuda" if device.type == "cuda" else "cpu"]
    fits = int(free * AUTO_MEMORY_SHARE) // per_row - 1  # one slot holds the prompt
    rows = max(1, min(cap, fits, samples))
    return BatchPlan(
        rows,
        f"auto: {per_row / 2**20:.1f} MiB of cache per row ({positions} positions), "
        f"{free / 2**30:.1f} GiB free on {device.type}, at most {cap} rows",
    )


def _free_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, or the RAM the kernel says is available."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


@dataclass
class _Row:
    sample: Continuation
    generator: torch.Generator
    token: int  # the last token chosen, fed at the next step


def generate(
    loaded: LoadedModel,
    prompts: list[PromptSamples],
    config: SamplingConfig,
    batch: int,
    on_sample: Callable[[], None] | None = None,
) -> tuple[list[list[Continuation]], DecodeStats]:
    """Every prompt's samples, in order, and the decoding statistics: up to `batch` rows in
    flight (continuous batching, `models.batched`), taken in order from the samples of
    the prompts; a row that ends is replaced by the next sample at once. A prompt is
    prefilled once, alone, and its cache copied into each of its samples' rows.
    `config.seed` is unused: each prompt carries its own. With a packed, batch-invariant
    model (a CPU in float32) every sample is the same bits for every `batch`.
    `on_sample()` is called as each sample ends."""
    import torch

    from weighted_mtp.models.batched import SlotCache, copy_prompt, decode_step, prefill
    from weighted_mtp.models.packed import batch_invariant, fully_packed

    model = loaded.model
    samples = [[Continuation() for _ in range(p.n)] for p in prompts]
    queue = deque((p, i) for p, prompt in enumerate(prompts) for i in range(prompt.n))
    stats = DecodeStats()
    if not queue:
        return samples, stats
    slots = min(batch, len(queue))
    capacity = max(len(p.ids) for p in prompts) + config.max_new_tokens
    ender = Ender(config, loaded.eos_id, loaded.decode)
    running: dict[int, _Row] = {}  # slot -> its row
    prefilled: tuple[int, Tensor] | None = None  # the prompt in the prompt slot, its logits
    start = time.perf_counter()

    def ended(row: _Row) -> bool:
        if not ender.push(row.sample, row.token):
            return False
        if on_sample is not None:
            on_sample()
        return True

    def fill(slot: int) -> None:
        """Give `slot` the next samples until one runs past its first token."""
        nonlocal prefilled
        while queue and slot not in running:
            p, i = queue.popleft()
            if prefilled is None or prefilled[0] != p:
                prefilled = p, prefill(model, cache, prompts[p].ids)
                stats.passes += 1
            generator = torch.Generator(device=loaded.device)
            generator.manual_seed(sample_seed(prompts[p].seed, i))
            first = int(choose(prefilled[1][None], config, [generator])[0])
            row = _Row(samples[p][i], generator, first)
            if not ended(row):
                copy_prompt(cache, slot)
                running[slot] = row

    with torch.inference_mode():
        cache = SlotCache(model, slots, capacity, fully_packed(model) and batch_invariant())
        while queue or running:
            for slot in range(slots):
                fill(slot)
            if not running:
                continue
            active = sorted(running)
            fed = torch.tensor([running[s].token for s in active], device=loaded.device)
            logits = decode_step(model, cache, active, fed)
            stats.passes += 1
            chosen = choose(logits, config, [running[s].generator for s in active]).tolist()
            for slot, token in zip(active, chosen, strict=True):
                running[slot].token = int(token)
                if ended(running[slot]):
                    del running[slot]
    stats.seconds = time.perf_counter() - start
    stats.new_tokens = sum(s.generated for task in samples for s in task)
    return samples, stats


def sample_prompt(
    loaded: LoadedModel, prompt: str, n: int, config: SamplingConfig, batch: int | None = None
) -> tuple[list[Continuation], DecodeStats]:
    """n samples of one prompt, `batch` (default all n) at a time; sample i draws from a
    generator seeded with `sample_seed(config.seed, i)`."""
    request = PromptSamples(loaded.encode_prompt(prompt), n, config.seed)
    (samples,), stats = generate(loaded, [request], config, batch or n)
    return samples, stats
