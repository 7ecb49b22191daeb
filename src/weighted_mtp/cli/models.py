"""`wmtp models`: download, convert and verify the model checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weighted_mtp.cli._console import (
    DryRunOpt,
    JsonOpt,
    MirrorOpt,
    RevisionOpt,
    checked_name,
    console,
    finish_report,
    print_json,
    print_plan,
    progress_bars,
    state,
    writing,
)
from weighted_mtp.storage.layout import BASE_MODELS, META_MODEL, MICRO_MODELS, MODELS

app = typer.Typer(help="Download, convert and verify the model checkpoints.", no_args_is_help=True)

BaseArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(BASE_MODELS)}.")]
ModelArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(MODELS)}.")]


@app.command()
def download(
    ctx: typer.Context,
    name: BaseArg,
    mirror: MirrorOpt = None,
    revision: RevisionOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the upstream files into raw/ and tokenizer/ (resumes), recording SOURCE.json."""
    from weighted_mtp.models.upstream_download import download_model, plan_download

    st = state(ctx)
    if dry_run:
        name = checked_name(name, BASE_MODELS, "model")
        plan = plan_download(
            st.layout, st.catalog.model(name), st.layout.model(name).root, revision
        )
        print_plan(plan.to_dict(), as_json, mirror)
        return
    with writing(ctx), progress_bars(not as_json):
        source = download_model(
            st.layout,
            st.catalog,
            checked_name(name, BASE_MODELS, "model"),
            mirror=mirror,
            revision=revision,
        )
    if as_json:
        print_json(source)
        return
    origin = source["mirror"] or f"{source['repo']}@{source['commit'] or source['revision']}"
    console.print(f"[bold]{name}[/] from {origin}", highlight=False)
    for path, entry in source["files"].items():
        console.print(
            f"  {path}  {entry['size']:,} bytes  sha256 {entry['sha256'][:16]}…", highlight=False
        )


@app.command()
def convert(
    ctx: typer.Context,
    name: BaseArg,
    dtype: Annotated[
        str, typer.Option(help="Target dtype: float16, bfloat16 or float32.")
    ] = "float16",
    as_json: JsonOpt = False,
) -> None:
    """Stream the raw checkpoint into safetensors/model.safetensors with configs and
    metadata.json (names and shapes checked first; NaN/Inf and fp16 overflow refused)."""
    from weighted_mtp.models.convert import convert_model

    st, name = state(ctx), checked_name(name, BASE_MODELS, "model")
    with writing(ctx), progress_bars(not as_json):
        metadata = convert_model(st.layout, name, dtype=dtype)
    if as_json:
        print_json(metadata)
        return
    weights = metadata["weights"]
    console.print(
        f"[bold]{name}[/]: {metadata['parameter_count']:,} parameters, "
        f"{metadata['source_dtype']} → {metadata['dtype']}, {weights['size']:,} bytes, "
        f"sha256 {weights['sha256'][:16]}…",
        highlight=False,
    )
    for dropped in metadata.get("dropped_tensors", {}).get("names", [])[:1]:
        count = len(metadata["dropped_tensors"]["names"])
        console.print(
            f"  left out {count} rotary buffer(s) such as {dropped} "
            "(derived from rope_theta; checked)",
            highlight=False,
        )
    if metadata.get("tokenizer_shared_with"):
        console.print(f"  tokenizer: same as {metadata['tokenizer_shared_with']}'s")
    elif metadata.get("tokenizer_difference"):
        console.print(
            f"  [yellow]tokenizer not shared[/]: {metadata['tokenizer_difference']}",
            highlight=False,
        )


@app.command()
def verify(ctx: typer.Context, name: ModelArg, as_json: JsonOpt = False) -> None:
    """Check a model folder: hashes, configs, names/shapes/dtypes, tokenizer, NaN/Inf."""
    from weighted_mtp.models.verify import verify_model

    name = checked_name(name, MODELS, "model")
    with writing(ctx) as layout, progress_bars(not as_json):  # records a verification stamp
        report = verify_model(layout, name)
    finish_report(report, as_json)


@app.command()
def micro(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(MICRO_MODELS)}.")],
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="slice (leading part of the converted base) or random "
            "[default: slice if the base is converted, else random]",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for --init random.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Build a laptop-sized model (dim 512, 4 blocks, vocab 8000, float16) sharing the
    base's tokenizer, trimmed to its first 8000 pieces."""
    from weighted_mtp.models.micro import build_micro

    name = checked_name(name, MICRO_MODELS, "model")
    with writing(ctx) as layout, progress_bars(not as_json):
        metadata = build_micro(layout, name, init=init, seed=seed)
    if as_json:
        print_json(metadata)
        return
    weights, source = metadata["weights"], metadata["source"]
    origin = (
        f"sliced from {source['model']}"
        if metadata["init"] == "slice"
        else f"random init, seed {metadata['seed']}"
    )
    console.print(
        f"[bold]{name}[/]: {metadata['parameter_count']:,} parameters, {origin}, "
        f"{weights['size']:,} bytes, sha256 {weights['sha256'][:16]}…",
        highlight=False,
    )
    trimmed = metadata["tokenizer_trimmed"]
    console.print(
        f"  tokenizer: first {trimmed['vocab_size']} of {trimmed['from']}'s "
        f"{trimmed['base_vocab_size']} pieces",
        highlight=False,
    )


@app.command("export-hf")
def export_hf(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"A Meta-format MTP model, e.g. {META_MODEL}.")],
    out_dir: Annotated[Path, typer.Argument(help="New (or empty) folder to write.")],
    as_json: JsonOpt = False,
) -> None:
    """Write trunk + head 0 as a standard Hugging Face LlamaForCausalLM folder."""
    from weighted_mtp.models.export_hf import export_hf as export

    with progress_bars(not as_json):
        out = export(state(ctx).layout, checked_name(name, MODELS, "model"), out_dir)
    if as_json:
        print_json({"name": name, "out_dir": str(out)})
        return
    console.print(
        f"[bold]{name}[/] exported to {out} (trunk + head 0; extra heads left out, see README.md)",
        highlight=False,
    )
