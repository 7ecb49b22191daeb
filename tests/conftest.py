"""Fixtures shared by the whole suite. Nothing here may touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite runs alike whatever the shell that starts it exports. Cleared here, before
# anything reads them, and so for every subprocess: wmtp's own settings (WMTP_ROOT,
# WMTP_CATALOG, the WMTP_MAX_* limits), the hub's (a token, an endpoint, a cache), a
# launcher's rank variables, and what makes rich colour or size its output. A test that
# needs one sets it.
_INHERITED_PREFIXES = ("WMTP_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCHELASTIC_")
_INHERITED = (
    *("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    *("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"),
)
for _name in [n for n in os.environ if n.startswith(_INHERITED_PREFIXES) or n in _INHERITED]:
    del os.environ[_name]
# Any accidental hub access fails at once: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture
def sigint_default():
    """SIGINT raises KeyboardInterrupt here and kills the processes the test starts, even in
    a test run started with SIGINT ignored (see `helpers.python_sigint`)."""
    from helpers import python_sigint

    with python_sigint():
        yield


@pytest.fixture
def layout(tmp_path: Path):
    """A fresh storage root with the storage layout created."""
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    layout = Layout(tmp_path / "storage")
    init_storage(layout)
    return layout


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-2-style SentencePiece model (unk 0, bos 1, eos 2, byte fallback, >8000
    pieces), trained once per session on local text. Tests must not modify it."""
    from weighted_mtp.synthetic.llama_tokenizer import train_llama_style_tokenizer

    return train_llama_style_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")


@pytest.fixture(scope="session")
def eval_layout(tmp_path_factory: pytest.TempPathFactory):
    """Real HumanEval, synthetic MBPP and CodeContests, downloaded from local mirrors.
    Shared by the session: tests must not modify it."""
    from weighted_mtp.assets.benchmarks.codecontests import write_codecontests_mirror
    from weighted_mtp.assets.benchmarks.humaneval import write_humaneval_mirror
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.storage.atomic import atomic_write
    from weighted_mtp.storage.init import init_storage
    from weighted_mtp.storage.layout import Layout

    base = tmp_path_factory.mktemp("eval")
    layout = Layout(base / "storage")
    init_storage(layout)
    mirrors = {
        "humaneval": write_humaneval_mirror(base / "he", atomic_write),
        "mbpp": write_mbpp_mirror(base / "mbpp", atomic_write, n_tasks=12),
        "codecontests": write_codecontests_mirror(base / "cc", atomic_write, n_problems=16),
    }
    for name, mirror in mirrors.items():
        download_dataset(layout, load_catalog(None), name, mirror=mirror)
    return layout
