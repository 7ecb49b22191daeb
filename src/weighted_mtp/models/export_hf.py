"""Export an MTP model's next-token path (trunk + head 0) as a Hugging Face Llama folder.

An MTP model whose prediction heads are one transformer block each is, for head k, a plain
Llama with the trunk's blocks followed by head k's block. So `LlamaForCausalLM` with
`n_layers - n_future_tokens + 1` layers runs head 0 exactly, and the whole Hugging Face
ecosystem (generation, evaluation harnesses) can use the model. Two conversions apply, the
same ones `transformers`' Llama conversion script makes: names change, and the rows of the
query and key projections are permuted from Meta's interleaved rotary pairs (2i, 2i+1) to
Hugging Face's half-split pairs (i, i + head_dim/2).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weighted_mtp import assets, progress
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import MetaParams, meta_tensor_shapes
from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer
from weighted_mtp.models.safetensors_stream import DTYPES, SafetensorsWriter, TensorSpec
from weighted_mtp.models.tokenizer import tokenizer_facts
from weighted_mtp.models.tokenizer_agreement import agreement_corpus, check_agreement
from weighted_mtp.storage.atomic import TEMP_MARKER, write_json, write_text
from weighted_mtp.storage.layout import Layout

if TYPE_CHECKING:
    import torch

_BLOCK_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


@dataclass(frozen=True)
class TensorSource:
    """Where a Hugging Face tensor comes from; `rotary_heads` is set for q and k, whose rows
    are permuted per head."""

    hf_name: str
    meta_name: str
    rotary_heads: int | None = None


def head_block_name(params: MetaParams, head: int) -> str:
    """Meta's prefix of prediction head `head`'s block."""
    if not 0 <= head < params.n_future_tokens:
        raise WmtpError(f"head {head} does not exist: the model has {params.n_future_tokens}")
    return f"layers.{params.n_trunk_layers}" if head == 0 else f"extra_heads.{head - 1}"


def hf_tensor_sources(params: MetaParams, head: int = 0) -> list[TensorSource]:
    """Every tensor of the Llama that runs the trunk plus head `head`, in file order."""
    blocks = [f"layers.{i}" for i in range(params.n_trunk_layers)]
    blocks.append(head_block_name(params, head))
    sources = [TensorSource("model.embed_tokens.weight", "tok_embeddings.weight")]
    for index, block in enumerate(blocks):
        for meta_suffix, hf_suffix in _BLOCK_NAMES.items():
            heads = {
                "attention.wq.weight": params.n_heads,
                "attention.wk.weight": params.kv_heads,
            }.get(meta_suffix)
            sources.append(
                TensorSource(f"model.layers.{index}.{hf_suffix}", f"{block}.{meta_suffix}", heads)
            )
    sources.append(TensorSource("model.norm.weight", "norm.weight"))
    sources.append(TensorSource("lm_head.weight", "output.weight"))
    return sources


def interleaved_to_half_split(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from pairs (2i, 2i+1) to pairs (i, i + head_dim/2)."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.view(n_heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_split_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half_split`: pairs (i, i + head_dim/2) to (2i, 2i+1)."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.view(n_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def hf_llama_config(
    params: MetaParams,
    *,
    n_layers: int,
    dtype: str,
    bos_id: int | None = 1,
    eos_id: int | None = 2,
) -> dict[str, Any]:
    """config.json of a `LlamaForCausalLM` with `params`' block shapes and `n_layers` blocks."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": params.dim,
        "intermediate_size": params.intermediate_size,
        "num_hidden_layers": n_layers,
        "num_attention_heads": params.n_heads,
        "num_key_value_heads": params.kv_heads,
        "head_dim": params.head_dim,
        "vocab_size": params.vocab_size,
        "max_position_embeddings": params.max_seq_len,
        "rms_norm_eps": params.norm_eps,
        "rope_theta": float(params.rope_theta),
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
    }


def hf_tensors(handle: Any, sources: list[TensorSource]) -> Iterator[tuple[str, torch.Tensor]]:
    """`(hf name, tensor)` pairs read one at a time from an open safetensors file."""
    for source in sources:
        tensor = handle.get_tensor(source.meta_name)
        if source.rotary_heads:
            tensor = interleaved_to_half_split(tensor, source.rotary_heads)
        yield source.hf_name, tensor


def _readme(name: str, params: MetaParams, tokenizer_agreement: str) -> str:
    left_out = ", ".join(f"extra_heads.{j}" for j in range(params.n_extra_heads)) or "none"
    return (
        f"# {name}: next-token export\n\n"
        f"Exported by `wmtp models export-hf` from the multi-token-prediction model `{name}`"
        f" ({params.n_layers} blocks, {params.n_future_tokens} prediction heads).\n\n"
        f"This folder is a standard `LlamaForCausalLM`: the {params.n_trunk_layers} trunk"
        f" blocks plus prediction head 0 (`layers.{params.n_trunk_layers}`), which predicts"
        " the next token. Its logits equal the adapter's head 0.\n\n"
        f"Left out: the extra prediction heads for tokens t+2 and later ({left_out}). Use"
        " `weighted_mtp.models.adapter.load_mtp_model` on the original folder for them.\n\n"
        "Query and key projections are permuted from Meta's interleaved rotary layout to"
        " Hugging Face's half-split layout.\n\n"
        "## Tokenizer\n\n"
        "`tokenizer.model` is the SentencePiece model the data and the model use."
        " `tokenizer.json` is a fast (Rust `tokenizers`) BPE built by wmtp from that model's"
        " pieces and scores, not by transformers' Llama conversion (which adds no dummy prefix"
        " before leading spaces and ranks merges by id). `tokenizer_config.json` loads it as"
        " `PreTrainedTokenizerFast` with `split_special_tokens` (a `<s>` in text is text, as in"
        " SentencePiece) and BOS prepended; it keeps the SentencePiece facts under"
        " `sentencepiece`.\n\n"
        f"Checked at export: {tokenizer_agreement}.\n"
    )


def _staging_dir(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise WmtpError(
            "export folder already exists and is not empty",
            path=out_dir,
            hint="remove it or choose another folder",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{TEMP_MARKER}", dir=out_dir.parent))


def _write_tokenizer(layout: Layout, tokenizer_model: Path, out: Path) -> str:
    """tokenizer.model, and the tokenizer.json + tokenizer_config.json that transformers
    loads with SentencePiece's ids (see `hf_tokenizer`); checked before the folder is
    published. Returns the check's detail."""

    shutil.copyfile(tokenizer_model, out / "tokenizer.model")
    write_hf_tokenizer(out, out / "tokenizer.model")
    return check_agreement(out, out / "tokenizer.model", agreement_corpus(layout)).detail()


def export_hf(layout: Layout, name: str, out_dir: str | Path) -> Path:
    """Write trunk + head 0 of the Meta-format model `name` as a Hugging Face Llama folder
    (config.json, model.safetensors, tokenizer files, README.md). The folder is built under
    a temporary name next to `out_dir` and renamed when complete."""
    from safetensors import safe_open

    from weighted_mtp.models.adapter import (
        read_mtp_params,
        require_matching_shapes,
        require_tokenizer_fits,
    )

    paths = layout.model(name)
    if not paths.params.is_file():
        build = assets.spec(name).build[-1]  # the step that writes its configs
        hint = (
            "it is already a Hugging Face Llama: use its configs/ and safetensors/"
            if paths.hf_config.is_file()
            else f"build it first: wmtp models {build} {name}"
        )
        raise WmtpError(
            f"{name} has no Meta-format configs/params.json", path=paths.params, hint=hint
        )
    params = read_mtp_params(paths)
    require_matching_shapes(meta_tensor_shapes(params), paths.weights, paths.params)
    facts = tokenizer_facts(paths.tokenizer_model)
    require_tokenizer_fits(paths.tokenizer_model, params.vocab_size)
    out_dir = Path(out_dir).absolute()
    staging = _staging_dir(out_dir)
    try:
        sources = hf_tensor_sources(params, head=0)
        with safe_open(paths.weights, framework="pt") as handle:
            dtype = handle.get_slice(sources[0].meta_name).get_dtype()
            specs = [
                TensorSpec(s.hf_name, dtype, tuple(handle.get_slice(s.meta_name).get_shape()))
                for s in sources
            ]
            with (
                SafetensorsWriter(staging / "model.safetensors", specs, {"format": "pt"}) as writer,
                progress.task(f"export {name}", writer.size, "bytes") as advance,
            ):
                for hf_name, tensor in hf_tensors(handle, sources):
                    writer.write(hf_name, tensor)
                    advance(tensor.nbytes)
        write_json(
            staging / "config.json",
            hf_llama_config(
                params,
                n_layers=params.n_trunk_layers + 1,
                dtype=DTYPES[dtype][0],
                bos_id=facts.bos_id,
                eos_id=facts.eos_id,
            ),
        )
        agreement = _write_tokenizer(layout, paths.tokenizer_model, staging)
        write_text(staging / "README.md", _readme(name, params, agreement))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
