"""Next-token decoding of many rows at once, each row its own sequence (continuous batching).

A `SlotCache` holds the keys and values of the trunk and head 0 for `slots` rows, each row
with its own length: a prompt is prefilled into its slot alone (no padding to the longest
prompt), then every running row advances by one token per `decode_step`, all rows through
the weights together. A slot whose sequence ended takes the next prompt while the others
keep their caches.

Exact mode (`SlotCache.exact`, for a CPU model whose linear layers are oneDNN-packed and
batch-invariant, see `models.packed.batch_invariant`): a row's logits are the same bits
whatever rows are decoded beside it. The packed layers give each row of a product of two
or more rows the same bits (a one-row step runs its row twice), and attention runs over
each row's own length, rows of equal length in neighbouring slots together, over views of
the cache (a padded batched attention sums in another order). Without it (a GPU,
bfloat16), attention is one masked product over all rows, and a row's logits can differ
from its one-row logits in the last bits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor

from weighted_mtp.errors import WmtpError
from weighted_mtp.models.adapter import (
    MtpTransformer,
    TransformerBlock,
    read_checked_llama_config,
    rotary_tables,
    rotate_interleaved,
)
from weighted_mtp.models.architecture import HfLlamaConfig, MetaParams
from weighted_mtp.models.export_hf import half_split_to_interleaved, hf_tensor_sources
from weighted_mtp.storage.layout import ModelPaths


class SlotCache:
    """Keys and values `[slots + 1, kv_heads, capacity, head_dim]` of every block of the
    trunk and head 0; the last slot holds the prompt being prefilled (`PROMPT_SLOT`),
    copied from there into each slot that samples it."""

    def __init__(self, model: MtpTransformer, slots: int, capacity: int, exact: bool) -> None:
        weight = model.tok_embeddings.weight
        p = model.params
        shape = (slots + 1, p.kv_heads, capacity, p.head_dim)
        blocks = len(model.layers)
        self.keys = [
            torch.zeros(shape, device=weight.device, dtype=weight.dtype) for _ in range(blocks)
        ]
        self.values = [
            torch.zeros(shape, device=weight.device, dtype=weight.dtype) for _ in range(blocks)
        ]
        self.lengths = [0] * (slots + 1)
        self.capacity, self.exact = capacity, exact
        # Tables for the model's whole context, whatever the capacity, so that a position's
        # angles are the same numbers in every run.
        self.cos, self.sin = rotary_tables(p, max(p.max_seq_len, capacity), weight.device)

    @property
    def prompt_slot(self) -> int:
        return len(self.lengths) - 1

    @staticmethod
    def bytes_per_token(model: MtpTransformer) -> int:
        """Cache bytes one position of one row takes (keys and values of every block)."""
        p = model.params
        element = model.tok_embeddings.weight.element_size()
        return len(model.layers) * 2 * p.kv_heads * p.head_dim * element


def prefill(model: MtpTransformer, cache: SlotCache, ids: list[int]) -> Tensor:
    """Run a prompt alone into the prompt slot; head 0's float32 logits `[vocab]` after it."""
    slot, length = cache.prompt_slot, len(ids)
    if length > cache.capacity:
        raise ValueError(f"a prompt of {length} tokens does not fit {cache.capacity} positions")
    device = model.tok_embeddings.weight.device
    tokens = torch.tensor([ids], device=device)  # [1, prompt]
    keys, values = cache.keys, cache.values

    def write(block: int, k: Tensor, v: Tensor) -> None:
        keys[block][slot, :, :length] = k[0].transpose(0, 1)
        values[block][slot, :, :length] = v[0].transpose(0, 1)

    def attend(block: int, q: Tensor) -> Tensor:
        k = _repeat_kv(keys[block][slot : slot + 1, :, :length], q.shape[2])
        v = _repeat_kv(values[block][slot : slot + 1, :, :length], q.shape[2])
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True)
        return out.transpose(1, 2).reshape(1, length, -1)

    cos, sin = cache.cos[:length], cache.sin[:length]
    normed = _blocks(model, tokens, cos, sin, write, attend)  # [1, dim]
    cache.lengths[slot] = length
    logits: Tensor = model.output(normed)[0].float()
    return logits


def copy_prompt(cache: SlotCache, slot: int) -> None:
    """Give `slot` the prompt slot's cached prompt (its sequence starts there)."""
    source, length = cache.prompt_slot, cache.lengths[cache.prompt_slot]
    for keys, values in zip(cache.keys, cache.values, strict=True):
        keys[slot, :, :length] = keys[source, :, :length]
        values[slot, :, :length] = values[source, :, :length]
    cache.lengths[slot] = length


def decode_step(
    model: MtpTransformer, cache: SlotCache, slots: list[int], tokens: Tensor
) -> Tensor:
    """Append `tokens` `[rows]` to the sequences of `slots` (one token each, distinct
    slots); head 0's float32 logits `[rows, vocab]` after them."""
    rows = len(slots)
    if cache.exact and rows == 1:  # packed layers round one row apart from two or more
        return decode_step_rows(model, cache, slots * 2, tokens.repeat(2))[:1]
    return decode_step_rows(model, cache, slots, tokens)


def decode_step_rows(
    model: MtpTransformer, cache: SlotCache, slots: list[int], tokens: Tensor
) -> Tensor:
    device = tokens.device
    starts = [cache.lengths[s] for s in slots]
    if max(starts) >= cache.capacity:
        raise ValueError(f"a row outgrew its {cache.capacity} cached positions")
    index = torch.tensor(slots, device=device)
    positions = torch.tensor(starts, device=device)
    keys, values = cache.keys, cache.values

    def write(block: int, k: Tensor, v: Tensor) -> None:
        keys[block][index, :, positions] = k[:, 0]
        values[block][index, :, positions] = v[:, 0]

    if cache.exact:
        runs = _equal_length_runs(slots, starts)

        def attend(block: int, q: Tensor) -> Tensor:
            out = torch.empty_like(q)  # [rows, 1, heads, head_dim]
            for first, last, slot, length in runs:
                # Views of the cache, not gathered copies: a run is neighbouring slots.
                width = last - first
                k = _repeat_kv(keys[block][slot : slot + width, :, :length], q.shape[2])
                v = _repeat_kv(values[block][slot : slot + width, :, :length], q.shape[2])
                attended = F.scaled_dot_product_attention(q[first:last].transpose(1, 2), k, v)
                out[first:last] = attended.transpose(1, 2)
            return out.reshape(len(slots), 1, -1)

    else:
        span = max(starts) + 1
        visible = torch.arange(span, device=device)[None, :] <= positions[:, None]
        mask = visible[:, None, None, :]  # [rows, 1, 1, span]
        first = slots[0]
        # Running rows are usually a run of neighbouring slots: a view then, not a copy.
        rows: slice | Tensor = (
            slice(first, first + len(slots))
            if slots == list(range(first, first + len(slots)))
            else index
        )

        def attend(block: int, q: Tensor) -> Tensor:
            k = _repeat_kv(keys[block][rows, :, :span], q.shape[2])
            v = _repeat_kv(values[block][rows, :, :span], q.shape[2])
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
            return out.transpose(1, 2).reshape(len(slots), 1, -1)

    cos, sin = cache.cos[positions][:, None], cache.sin[positions][:, None]  # [rows, 1, hd/2]
    normed = _blocks(model, tokens[:, None], cos, sin, write, attend)  # [rows, dim]
    for slot, start in zip(slots, starts, strict=True):
        cache.lengths[slot] = start + 1
    logits: Tensor = model.output(normed).float()
    return logits


def _equal_length_runs(slots: list[int], starts: list[int]) -> list[tuple[int, int, int, int]]:
    """The step's rows cut into runs `(first, last, slot, length)`: rows `first..last - 1`
    are the neighbouring slots `slot..` and have the same length after the step. A run
    attends together, over views of its slots' caches: rows of one length give the same
    bits together as one at a time, where padding to a longer row would sum in another
    order (and gathering the rows of one length from anywhere copied their caches: a
    third of a step's time at 16 rows of a 583M model)."""
    runs: list[tuple[int, int, int, int]] = []
    for row, (slot, start) in enumerate(zip(slots, starts, strict=True)):
        if runs:
            first, last, run_slot, length = runs[-1]
            if start + 1 == length and slot == run_slot + (last - first):
                runs[-1] = (first, row + 1, run_slot, length)
                continue
        runs.append((row, row + 1, slot, start + 1))
    return runs


def _repeat_kv(kv: Tensor, n_heads: int) -> Tensor:
    """Grouped-query attention: query head h reads kv head h // (n_heads / kv_heads)."""
    repeats = n_heads // kv.shape[1]
    return kv.repeat_interleave(repeats, dim=1) if repeats > 1 else kv


def _blocks(
    model: MtpTransformer,
    tokens: Tensor,
    cos: Tensor,
    sin: Tensor,
    write: Callable[[int, Tensor, Tensor], None],
    attend: Callable[[int, Tensor], Tensor],
) -> Tensor:
    """The trunk and head 0 over `tokens` `[rows, seq]` (`TransformerBlock.forward`, with
    the cache written and attended through `write` and `attend`); the final-normed hidden
    state `[rows, dim]` at each row's last position."""
    h = model.tok_embeddings(tokens)
    rows, seq, _ = h.shape
    blocks: list[TransformerBlock] = list(model.layers)  # type: ignore[arg-type]  # ModuleList
    for number, block in enumerate(blocks):
        attention = block.attention
        x = block.attention_norm(h)
        q = attention.wq(x).view(rows, seq, attention.n_heads, attention.head_dim)
        k = attention.wk(x).view(rows, seq, attention.n_kv_heads, attention.head_dim)
        v = attention.wv(x).view(rows, seq, attention.n_kv_heads, attention.head_dim)
        q, k = rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)
        write(number, k, v)
        h = h + attention.wo(attend(number, q))
        h = h + block.feed_forward(block.ffn_norm(h))
    normed: Tensor = model.norm(h[:, -1])
    return normed


def llama_params(config: HfLlamaConfig, source: Path) -> MetaParams:
    """The `MetaParams` of a one-head MTP model that computes what a Hugging Face Llama
    `config.json` describes (its trunk and head 0 are the Llama's blocks); one error for a
    feature the MTP blocks do not have."""
    others = config.others
    unsupported = [
        name for name in ("rope_scaling", "attention_bias", "mlp_bias") if others.get(name)
    ]
    if others.get("hidden_act", "silu") != "silu":
        unsupported.append(f"hidden_act {others['hidden_act']}")
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        unsupported.append("a head_dim other than hidden_size / num_attention_heads")
    if unsupported:
        raise WmtpError(
            f"config.json has {unsupported[0]}, which generation does not implement",
            path=source,
        )
    before_rounding = int(2 * (4 * config.hidden_size) / 3)  # Llama's SwiGLU size, unrounded
    if config.intermediate_size >= before_rounding:
        multiple_of, multiplier = config.intermediate_size, None
    else:
        multiple_of, multiplier = 1, (config.intermediate_size + 0.5) / before_rounding
    params = MetaParams(
        dim=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        vocab_size=config.vocab_size,
        n_kv_heads=config.kv_heads,
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        norm_eps=float(others.get("rms_norm_eps", 1e-6)),  # transformers' default
        rope_theta=config.rope_theta,
        max_seq_len=int(others.get("max_position_embeddings", 2048)),
        n_future_tokens=1,
    )
    if params.intermediate_size != config.intermediate_size:  # the arithmetic above failed
        raise WmtpError(
            f"intermediate_size {config.intermediate_size} is not expressible", path=source
        )
    return params


def load_llama_for_decoding(
    model_dir: Path, device: Any = "cpu", dtype: torch.dtype = torch.float32
) -> MtpTransformer:
    """A Hugging Face-format Llama folder as a one-head `MtpTransformer` (the same blocks;
    the query and key rows permuted back to Meta's interleaved rotary pairs, as
    `models convert` permutes them forth), so that it decodes in batches like an MTP
    model. Its logits are transformers' up to float rounding (tests compare them)."""
    paths = ModelPaths(model_dir.name, model_dir)
    config = read_checked_llama_config(paths)
    params = llama_params(config, paths.hf_config)
    with torch.device("meta"):
        model = MtpTransformer(params)
    state = {}
    with safe_open(paths.weights, framework="pt", device="cpu") as handle:
        names = set(handle.keys())
        for source in hf_tensor_sources(params, 0):
            hf_name = source.hf_name
            if hf_name == "lm_head.weight" and hf_name not in names:  # tied to the embedding
                hf_name = "model.embed_tokens.weight"
            tensor = handle.get_tensor(hf_name)
            if source.rotary_heads:
                tensor = half_split_to_interleaved(tensor, source.rotary_heads)
            state[source.meta_name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
