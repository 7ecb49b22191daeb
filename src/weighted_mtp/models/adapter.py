"""Meta's multi-token-prediction Llama in plain PyTorch, and loaders for model folders.

The architecture follows Meta's `llama/model.py` for multi-token prediction without fairscale:
a shared trunk of `n_layers - n_future_tokens` blocks, then `n_future_tokens` prediction
heads, each one transformer block applied to the trunk output (head 0 is the last entry of
`layers`, heads 1.. are `extra_heads`), then a shared final norm and output projection.
Parameter names are Meta's checkpoint names, so converted weights load with `strict=True`.

Rotary embeddings use Meta's convention (dimensions 2i and 2i+1 of a head form a pair) and
are computed with real arithmetic, not complex tensors, so the model also runs on MPS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import (
    HfLlamaConfig,
    MetaParams,
    Shapes,
    compare_shapes,
    hf_llama_tensor_shapes,
    meta_tensor_shapes,
)
from weighted_mtp.models.tokenizer import tokenizer_facts
from weighted_mtp.storage.layout import ModelPaths

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_tables(params: MetaParams, seqlen: int, device: Any) -> tuple[Tensor, Tensor]:
    """cos and sin, `[seq, head_dim / 2]`, of Llama's rotary angles with `rope_theta`."""
    exponents = torch.arange(0, params.head_dim, 2, device=device).float() / params.head_dim
    inv_freq = 1.0 / (params.rope_theta**exponents)
    angles = torch.outer(torch.arange(seqlen, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def rotate_interleaved(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate `[batch, seq, heads, head_dim]` by pairs (2i, 2i+1), computed in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # [..., head_dim / 2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, p: MetaParams) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.kv_heads, p.head_dim
        self.wq = nn.Linear(p.dim, p.n_heads * p.head_dim, bias=False)
        self.wk = nn.Linear(p.dim, p.kv_heads * p.head_dim, bias=False)
        self.wv = nn.Linear(p.dim, p.kv_heads * p.head_dim, bias=False)
        self.wo = nn.Linear(p.n_heads * p.head_dim, p.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        """With `cache`, `x` continues the cached positions (cos/sin are their rows)."""
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, seq, head_dim]
        mask = None
        if cache is not None:
            mask = cache.causal_mask(seqlen)
            k, v = cache.extend(k, v)  # [batch, kv_heads, cached + seq, head_dim]
        repeats = self.n_heads // self.n_kv_heads
        if repeats > 1:  # grouped-query attention: query head h reads kv head h // repeats
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        projected: Tensor = self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))
        return projected


class FeedForward(nn.Module):
    """SwiGLU with Llama's hidden size (`MetaParams.intermediate_size`)."""

    def __init__(self, p: MetaParams) -> None:
        super().__init__()
        self.w1 = nn.Linear(p.dim, p.intermediate_size, bias=False)
        self.w2 = nn.Linear(p.intermediate_size, p.dim, bias=False)
        self.w3 = nn.Linear(p.dim, p.intermediate_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return out


class TransformerBlock(nn.Module):
    def __init__(self, p: MetaParams) -> None:
        super().__init__()
        self.attention = Attention(p)
        self.feed_forward = FeedForward(p)
        self.attention_norm = RMSNorm(p.dim, p.norm_eps)
        self.ffn_norm = RMSNorm(p.dim, p.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        h: Tensor = x + self.attention(self.attention_norm(x), cos, sin, cache)
        out: Tensor = h + self.feed_forward(self.ffn_norm(h))
        return out


class MtpTransformer(nn.Module):
    """Meta's MTP Llama: trunk, `n_future_tokens` one-block heads, shared norm and output."""

    def __init__(self, params: MetaParams) -> None:
        super().__init__()
        self.params = params
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(params) for _ in range(params.n_trunk_layers + 1)
        )
        self.extra_heads = nn.ModuleList(
            TransformerBlock(params) for _ in range(params.n_extra_heads)
        )
        self.norm = RMSNorm(params.dim, params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)

    @property
    def n_future_tokens(self) -> int:
        return self.params.n_future_tokens

    def prediction_heads(self) -> list[TransformerBlock]:
        return [self.layers[-1], *self.extra_heads]

    def forward(self, tokens: Tensor, return_all_heads: bool = True) -> Tensor:
        """float32 logits `[batch, seq, heads, vocab]` (float64 for a float64 model); head k
        at position t predicts token t + k + 1. With `return_all_heads=False`, only head 0
        (next token) runs."""
        h, cos, sin = self.trunk(tokens)
        heads = self.prediction_heads()[: self.n_future_tokens if return_all_heads else 1]
        latents = torch.stack([head(h, cos, sin) for head in heads], dim=-2)
        return _float_logits(self.output(self.norm(latents)))

    def trunk(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The shared trunk's output `[batch, seq, dim]` and the rotary tables every head
        needs; with `head_logits`, lets a trainer run the heads one at a time."""
        h = self.tok_embeddings(tokens)
        cos, sin = rotary_tables(self.params, tokens.shape[1], h.device)
        for layer in self.layers[:-1]:
            h = layer(h, cos, sin)
        return h, cos, sin

    def head_logits(self, h: Tensor, k: int, cos: Tensor, sin: Tensor) -> Tensor:
        """float32 logits `[batch, seq, vocab]` of head k (predicting token t + k + 1) from
        the trunk output `h`: head block, shared norm and output."""
        return _float_logits(self.output(self.norm(self.prediction_heads()[k](h, cos, sin))))


def _float_logits(logits: Tensor) -> Tensor:
    """float32 logits (float64 stays float64, so gradient tests can run in float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class MtpLoss(NamedTuple):
    loss: Tensor
    per_head: Tensor


def mtp_loss(
    logits: Tensor,
    tokens: Tensor,
    loss_mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> MtpLoss:
    """Cross-entropy of every head against its shifted targets.

    Head k at position t is scored on token t + k + 1; positions whose target lies past the
    sequence end are ignored. `loss_mask` `[batch, seq]` marks which tokens count as targets.
    `weights` multiply each term: `[batch, seq]` weighs target tokens (aligned with
    `tokens`), `[batch, seq, heads]` weighs predictions (aligned with `logits`: head k at
    position t). Each head's loss is the weighted sum over its valid targets divided by
    their count, so weights of 1 give the plain mean and weights of 2 double it. `loss` is
    the mean over heads that have at least one valid target.
    """
    bsz, seqlen, n_heads, _vocab = logits.shape
    if tokens.shape != (bsz, seqlen):
        raise ValueError(f"tokens {list(tokens.shape)} do not match logits {list(logits.shape)}")
    if weights is not None and weights.shape not in ((bsz, seqlen), (bsz, seqlen, n_heads)):
        raise ValueError(
            f"weights {list(weights.shape)} must be [batch, seq] or [batch, seq, heads]"
        )
    mask = torch.ones_like(tokens, dtype=torch.float32) if loss_mask is None else loss_mask.float()
    per_head, counts = [], []
    for k in range(n_heads):
        shift = k + 1
        head_logits = logits[:, : seqlen - shift, k].float()
        targets = tokens[:, shift:]
        ce = F.cross_entropy(
            head_logits.reshape(-1, head_logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view_as(targets)
        valid = mask[:, shift:]
        factor = valid
        if weights is not None:
            w = weights[:, shift:] if weights.dim() == 2 else weights[:, : seqlen - shift, k]
            factor = valid * w.float()
        count = valid.sum()
        per_head.append((ce * factor).sum() / count.clamp(min=1))
        counts.append(count)
    per_head_t = torch.stack(per_head)
    has_targets = torch.stack(counts) > 0
    loss = per_head_t[has_targets].mean() if has_targets.any() else logits.sum() * 0.0
    return MtpLoss(loss, per_head_t)


# Loading model folders ---------------------------------------------------------------------


def _folder(model_dir: str | Path) -> ModelPaths:
    root = Path(model_dir)
    return ModelPaths(root.name, root)


def safetensors_shapes(path: Path) -> Shapes:
    """Names and shapes of the tensors in a safetensors file (reads only its header)."""
    if not path.is_file():
        raise WmtpError(
            "weights not found",
            path=path,
            hint="convert or build the model first (wmtp models convert/micro)",
        )
    try:
        with safe_open(path, framework="pt") as handle:
            names = handle.keys()
            return {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise WmtpError(f"cannot read safetensors file: {exc}", path=path) from None


def require_matching_shapes(expected: Shapes, weights: Path, config: Path) -> None:
    """Fail with the first difference between what the config implies and the file holds."""
    problems = compare_shapes(expected, safetensors_shapes(weights))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WmtpError(
            f"weights do not match {config.name}: {problems[0]}{more}",
            path=weights,
            hint="the configs and the tensors come from different models; rebuild the folder",
        )


def require_tokenizer_fits(tokenizer: Path, vocab_size: int) -> None:
    """A token id at or above the model's vocab would index past the embedding."""

    if not tokenizer.is_file():
        return
    pieces = tokenizer_facts(tokenizer).vocab_size
    if pieces > vocab_size:
        raise WmtpError(
            f"tokenizer has {pieces} pieces but the model's vocab is {vocab_size}",
            path=tokenizer,
            hint="use the tokenizer that belongs to this model",
        )


def read_mtp_params(paths: ModelPaths) -> MetaParams:
    """params.json, with `vocab_size: -1` resolved from the embedding's shape."""
    params = MetaParams.from_file(paths.params)
    if params.vocab_size <= 0:
        embedding = safetensors_shapes(paths.weights).get("tok_embeddings.weight")
        if embedding is None:
            raise WmtpError("missing tensor tok_embeddings.weight", path=paths.weights)
        params = params.with_vocab_size(embedding[0])
    return params


def read_checked_mtp_params(paths: ModelPaths) -> MetaParams:
    """`read_mtp_params`, checked against the folder's weights (names, shapes) and tokenizer."""
    params = read_mtp_params(paths)
    require_matching_shapes(meta_tensor_shapes(params), paths.weights, paths.params)
    require_tokenizer_fits(paths.tokenizer_model, params.vocab_size)
    return params


def load_mtp_model(
    model_dir: str | Path, device: Any = "cpu", dtype: torch.dtype = torch.float32
) -> MtpTransformer:
    """The MTP transformer of a Meta-format model folder, weights loaded, in eval mode.

    Tensors are read one at a time from `safetensors/model.safetensors` into a module built
    on the meta device, so peak memory is the model's size in `dtype` (float32 by default).
    """
    paths = _folder(model_dir)
    params = read_checked_mtp_params(paths)
    with torch.device("meta"):
        model = MtpTransformer(params)
    with safe_open(paths.weights, framework="pt", device="cpu") as handle:
        names = handle.keys()
        state = {name: handle.get_tensor(name).to(device=device, dtype=dtype) for name in names}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


@contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers draws its own tqdm bar while loading weights; wmtp's commands report
    progress themselves, so the bar is off for the load and restored after."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers


def llama_config(typed: HfLlamaConfig) -> LlamaConfig:
    """transformers' LlamaConfig of a checked `config.json`."""
    from transformers import LlamaConfig

    fields = typed.to_dict()
    return LlamaConfig(**{k: v for k, v in fields.items() if k != "transformers_version"})


def read_checked_llama_config(paths: ModelPaths) -> HfLlamaConfig:
    """A Hugging Face-format folder's config.json, checked against its weights (names,
    shapes) and tokenizer."""
    typed = HfLlamaConfig.from_file(paths.hf_config)
    require_matching_shapes(hf_llama_tensor_shapes(typed), paths.weights, paths.hf_config)
    require_tokenizer_fits(paths.tokenizer_model, typed.vocab_size)
    return typed


def load_reference_model(
    model_dir: str | Path, device: Any = "cpu", dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """transformers' LlamaForCausalLM from a Hugging Face-format model folder, in eval mode."""
    from transformers import GenerationConfig, LlamaForCausalLM

    paths = _folder(model_dir)
    config = llama_config(read_checked_llama_config(paths))
    # The weights live in safetensors/, configs elsewhere: pass both configs explicitly.
    with _no_loading_bar():
        loaded: Any = LlamaForCausalLM.from_pretrained(  # (model, info): output_loading_info
            paths.safetensors_dir,
            config=config,
            dtype=dtype,
            output_loading_info=True,
            generation_config=GenerationConfig.from_model_config(config),
        )
    model, info = loaded
    problems = [f"missing tensor {n}" for n in info.get("missing_keys", [])]
    problems += [f"unexpected tensor {n}" for n in info.get("unexpected_keys", [])]
    if problems:
        raise WmtpError(
            f"weights do not load into LlamaForCausalLM: {problems[0]}", path=paths.weights
        )
    loaded_model: LlamaForCausalLM = model.to(device).eval()
    return loaded_model


# Incremental decoding --------------------------------------------------------------------


class KVCache:
    """Keys and values of one attention layer for positions `[0, length)`.

    Buffers are allocated once for `max_len` positions; setting `length` back discards the
    positions after it (speculative decoding rolls back rejected drafts this way).
    """

    def __init__(self, batch: int, p: MetaParams, max_len: int, device: Any, dtype: torch.dtype):
        shape = (batch, p.kv_heads, max_len, p.head_dim)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def causal_mask(self, seqlen: int) -> Tensor | None:
        """`[seq, length + seq]` bool: new position i sees cached ones and new ones <= i."""
        if seqlen == 1:
            return None
        rows = torch.arange(seqlen, device=self.keys.device)[:, None] + self.length
        return torch.arange(self.length + seqlen, device=self.keys.device)[None, :] <= rows

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append `[batch, kv_heads, seq, head_dim]`; all cached keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache holds {self.keys.shape[2]} positions, {end} needed")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class MtpCache:
    """KV caches for the trunk and every prediction head, plus rotary tables up to `max_len`."""

    def __init__(self, model: MtpTransformer, batch: int, max_len: int) -> None:
        weight = model.tok_embeddings.weight
        p = model.params
        self.trunk = [
            KVCache(batch, p, max_len, weight.device, weight.dtype) for _ in model.layers[:-1]
        ]
        self.heads = [
            KVCache(batch, p, max_len, weight.device, weight.dtype)
            for _ in range(p.n_future_tokens)
        ]
        self.cos, self.sin = rotary_tables(p, max_len, weight.device)

    @property
    def length(self) -> int:
        return self.trunk[0].length if self.trunk else self.heads[0].length

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (in the trunk and all heads)."""
        for cache in (*self.trunk, *self.heads):
            cache.length = min(cache.length, length)


def cached_latents(
    model: MtpTransformer, tokens: Tensor, cache: MtpCache, n_heads: int = 1
) -> Tensor:
    """Final-normed hidden states `[batch, seq, n_heads, dim]` of the first `n_heads` heads for
    `tokens` `[batch, seq]` continuing the cached positions; `model.output` of them gives
    the logits. Heads beyond `n_heads` are not run, so their caches fall behind: use one
    `n_heads` for a whole generation."""
    start = cache.length
    end = start + tokens.shape[1]
    cos, sin = cache.cos[start:end], cache.sin[start:end]
    h = model.tok_embeddings(tokens)
    for layer, layer_cache in zip(model.layers[:-1], cache.trunk, strict=True):
        h = layer(h, cos, sin, layer_cache)
    heads = model.prediction_heads()[:n_heads]
    latents = torch.stack(
        [head(h, cos, sin, c) for head, c in zip(heads, cache.heads, strict=False)], dim=-2
    )  # [batch, seq, n_heads, dim]
    normed: Tensor = model.norm(latents)
    return normed
