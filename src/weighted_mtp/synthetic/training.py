"""A storage root ready for training, built offline in seconds: a Llama-style tokenizer,
a synthetic CodeContests set downloaded, prepared and cut to its small sets, and a random
micro-mtp of the size asked for (verified, so the trainer accepts it)."""

from __future__ import annotations

import shutil
from pathlib import Path

from weighted_mtp.storage.layout import META_MODEL, MICRO_MTP, Layout


def write_training_storage(
    root: str | Path,
    *,
    tokenizer_model: Path | None = None,
    dim: int = 32,
    n_layers: int = 3,
    n_heads: int = 2,
    vocab_size: int = 1024,
    n_future_tokens: int = 2,
    n_problems: int = 24,
    max_length: int = 320,
) -> Layout:
    """`root` with micro-mtp and codecontests (processed + small); returns its layout."""
    from weighted_mtp.assets.benchmarks.codecontests import write_codecontests_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.data.prepare import prepare_dataset
    from weighted_mtp.data.small import build_small
    from weighted_mtp.models.formats import MicroSize
    from weighted_mtp.models.micro import build_micro
    from weighted_mtp.models.verify import verify_model
    from weighted_mtp.storage.atomic import atomic_write
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.synthetic.llama_tokenizer import train_llama_style_tokenizer

    root = Path(root)
    layout = Layout(root / "storage")
    init_storage(layout)
    meta_tokenizer = layout.model(META_MODEL).tokenizer_model
    if tokenizer_model is None:
        train_llama_style_tokenizer(meta_tokenizer)
    else:
        shutil.copyfile(tokenizer_model, meta_tokenizer)
    write_codecontests_mirror(root / "mirror", atomic_write, n_problems=n_problems, seed=0)
    download_dataset(layout, load_catalog(), "codecontests", mirror=root / "mirror")
    prepare_dataset(layout, "codecontests", tokenizer=meta_tokenizer, max_length=max_length)
    build_small(layout, "codecontests")
    size = MicroSize(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        vocab_size=vocab_size,
        n_future_tokens=n_future_tokens,
    )
    build_micro(layout, MICRO_MTP, init="random", size=size)
    report = verify_model(layout, MICRO_MTP)
    if not report.ok:
        raise RuntimeError(f"the synthetic micro-mtp does not verify: {report.failures()}")
    return layout
