"""Helpers shared by the unit and integration tests (plain functions and constants; fixtures
live in the conftest files, which import from here, never the other way round)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typer.testing import CliRunner, Result

from weighted_mtp.cli import app
from weighted_mtp.errors import WmtpError

if TYPE_CHECKING:
    from weighted_mtp.assets.benchmark import Problem
    from weighted_mtp.storage.layout import Layout

TINY_META_PARAMS = {
    "dim": 64,
    "n_layers": 3,
    "n_heads": 2,
    "multiple_of": 32,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "n_future_tokens": 2,
    "vocab_size": 8320,
    "max_seq_len": 512,
}
TINY_REFERENCE_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 8320,
    "torch_dtype": "float32",
}


# Tiny models with uneven shapes (61 rows shard 31 + 30) and grouped-query attention, for
# loading tests that build model folders with `synthetic.model_mirrors.write_model_folder`.
LOADING_POLICY = {
    "dim": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 61,
    "multiple_of": 16, "n_future_tokens": 2, "max_seq_len": 64,
}  # fmt: skip
LOADING_REFERENCE = {
    "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 61,
    "max_position_embeddings": 64, "rope_theta": 500.0, "model_type": "llama",
}  # fmt: skip


def edited_tokenizer(source: Path, out: Path, piece_id: int, new_piece: str) -> Path:
    """A copy of a SentencePiece model with one piece renamed (a 'different' tokenizer)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(source.read_bytes())
    proto.pieces[piece_id].piece = new_piece
    out.write_bytes(proto.SerializeToString())
    return out


def hf_folder(sp_path: Path, folder: Path) -> Path:
    """A tokenizer folder as wmtp writes it: the SentencePiece model and its transformers
    files (tokenizer.json, tokenizer_config.json)."""
    import shutil

    from weighted_mtp.models.hf_tokenizer import write_hf_tokenizer

    folder.mkdir(parents=True)
    shutil.copyfile(sp_path, folder / "tokenizer.model")
    write_hf_tokenizer(folder, folder / "tokenizer.model")
    return folder


def flip_byte(path: Path, offset: int) -> None:
    """Flip every bit of one byte (negative offsets count from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wmtp_command(*args: str, root: Path, ranks: int = 1) -> list[str]:
    """The argv of `wmtp --root ROOT ARGS`, under `torchrun --nproc-per-node RANKS` (gloo on
    CPU) when `ranks` > 1."""
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return [*launcher, "-m", "weighted_mtp", "--root", str(root), *args]


def run_wmtp(*args: str, root: Path, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    """`wmtp --root ROOT ARGS` in a real process (or `ranks` torchrun ranks): exit codes and
    stderr as a user sees them."""
    return subprocess.run(
        wmtp_command(*args, root=root, ranks=ranks),
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


def checkpoint_model(path: Path, out: Path) -> dict[str, Any]:
    """The model tensors of a DCP training checkpoint (float32, as trained), via `out`."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(path, out)
    return torch.load(out, weights_only=True)["model"]


# A Baseline run trained in seconds on `write_training_storage`'s storage (`wmtp train
# baseline` options); `lr` and `seed` vary it.
TINY_RUN = [
    "--small",
    "--max-steps",
    "2",
    "--set",
    "batch_size=2",
    "--set",
    "micro_batch_size=1",
    "--set",
    "eval_every=0",
    "--set",
    "eval_batches=1",
    "--set",
    "checkpoint_every=0",
    "--set",
    "warmup_ratio=0",
    "--set",
    "lr=1e-2",
]


def add_eval_datasets(layout: Layout, mirrors: Path, tokenizer_model: Path) -> Layout:
    """The real HumanEval and a 40-task synthetic MBPP, downloaded from mirrors written under
    `mirrors` and prepared: what `wmtp eval run` and `wmtp eval compare` read."""
    from weighted_mtp.assets.benchmarks.humaneval import write_humaneval_mirror
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.catalog import load_catalog
    from weighted_mtp.data.download import download_dataset
    from weighted_mtp.data.prepare import prepare_dataset
    from weighted_mtp.storage.atomic import atomic_write

    written = {
        "humaneval": write_humaneval_mirror(mirrors / "he", atomic_write),
        "mbpp": write_mbpp_mirror(mirrors / "mbpp", atomic_write, n_tasks=40),
    }
    for name, mirror in written.items():
        download_dataset(layout, load_catalog(), name, mirror=mirror)
        prepare_dataset(layout, name, tokenizer=tokenizer_model)
    return layout


def write_weighted_storage(root: Path, tokenizer_model: Path) -> Layout:
    """A training storage (`write_training_storage`) plus a random micro-ref (dim 32, 2
    layers) whose tokenizer is micro-mtp's trimmed Meta tokenizer, so the storage records it
    as shared: what the weighted experiments need; and HumanEval and MBPP, which the suite
    ends evaluating on."""
    import shutil

    from weighted_mtp.models.micro import MicroSize, build_micro
    from weighted_mtp.models.verify import verify_model
    from weighted_mtp.storage.layout import META_MODEL, MICRO_REF, REFERENCE_MODEL
    from weighted_mtp.synthetic.training import write_training_storage

    layout = write_training_storage(root, tokenizer_model=tokenizer_model)
    base_tokenizer = layout.model(REFERENCE_MODEL).tokenizer_model
    base_tokenizer.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(layout.model(META_MODEL).tokenizer_model, base_tokenizer)
    size = MicroSize(dim=32, n_layers=2, n_heads=2, vocab_size=1024, n_future_tokens=1)
    build_micro(layout, MICRO_REF, init="random", size=size)
    assert verify_model(layout, MICRO_REF).ok
    return add_eval_datasets(layout, root / "eval-mirrors", tokenizer_model)


def invoke(*args: str, root: Path) -> Result:
    """`wmtp --root ROOT ARGS` in this process, through typer's CliRunner."""
    return CliRunner().invoke(app, ["--root", str(root), *args])


def cli_error(*args: str, root: Path) -> WmtpError:
    """The user error a command stops with (the CLI prints its `line()` and exits with its
    `exit_code`; tests/integration checks that printing once, in real processes)."""
    result = invoke(*args, root=root)
    assert isinstance(result.exception, WmtpError), (result.exit_code, result.output)
    return result.exception


@contextmanager
def python_sigint() -> Iterator[None]:
    """Python's own SIGINT handling (KeyboardInterrupt) in this process and SIGINT's default
    in every process started meanwhile, however the test run was started: a job started in
    the background by a shell without job control (`cmd &` in a script, `nohup cmd &`)
    inherits SIGINT ignored, and passes that on to what it starts. An exec resets a caught
    signal to its default, never an ignored one, so children need the handler set here."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# The MBPP-format benchmark below: one task with a test list far beyond any small context
# (as the real task 493's), one with a challenge test its reference fails, one whose passes.
MBPP_LONG_TASK = 493
MBPP_FAILED_CHALLENGE = 11
MBPP_PASSED_CHALLENGE = 12


def write_mbpp_benchmark(out_dir: Path) -> Path:
    """A mirror folder with `mbpp.jsonl` in MBPP's format, tasks 1-974 like the real
    benchmark (splits prompt 10, train 374, validation 90, test 500), each an add function
    with its reference code and three asserts; see the MBPP_* tasks above."""
    from weighted_mtp.assets.benchmarks.mbpp import write_mbpp_mirror
    from weighted_mtp.storage.atomic import atomic_write

    mirror = write_mbpp_mirror(out_dir, atomic_write, n_tasks=974)
    path = mirror / "mbpp.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        number = row["task_id"]
        if number == MBPP_LONG_TASK:
            zeros = ", ".join(str(i) for i in range(4000))
            first = row["test_list"][0]
            row["test_list"][0] = f"{first} + 0 * sum([{zeros}])"
        if number in (MBPP_FAILED_CHALLENGE, MBPP_PASSED_CHALLENGE):
            wrong = "-1" if number == MBPP_FAILED_CHALLENGE else row["test_list"][0].split("== ")[1]
            row["challenge_test_list"] = [f"assert add_{number}(1, 2) == {wrong}"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return mirror


def load_problems(
    layout: Layout, dataset: str, split: str = "test", only: set[str] | None = None
) -> dict[str, Problem]:
    """Problems by task id of one split (with `only`, just those)."""
    from weighted_mtp.eval.problems import load_split

    return load_split(layout, dataset, split, only=only).problems
