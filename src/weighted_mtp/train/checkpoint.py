"""Atomic, checksummed, resharding checkpoints through `torch.distributed.checkpoint` (DCP).

A checkpoint is the folder `checkpoints/step-NNNNNNNN/`: DCP's files (model and optimizer
state, each rank writing its shards, so a run resumes on a different number of ranks),
`trainer_state.json` (step, tokens seen, the learning-rate schedule, the data position and
the RNG rule) and, written last, `SHA256SUMS` with every other file's SHA-256. DCP's files
are hashed as each rank writes them (no second read). The folder is written under a
temporary name and renamed when complete, so a kill or a full disk leaves the previous
checkpoint as the latest. With LoRA only the trainable parameters are saved: the frozen base
is the verified model asset itself.

`--resume` loads the newest checkpoint that verifies against its `SHA256SUMS` (the ranks
share the hashing and agree on the verdict); a damaged newer one is named in one line and
kept aside as `step-N.damaged`. Pruning counts only checkpoints with a complete
`SHA256SUMS`, so the last good one stays until a newer one is complete.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from torch.distributed.checkpoint import state_dict_loader, state_dict_saver
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemWriter

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import (
    TEMP_MARKER,
    _fsync_dir,
    dumps_json,
    ensure_free_space,
    read_json,
    write_text,
)
from weighted_mtp.storage.hashing import read_sha256sums, sha256_file, write_sha256sums
from weighted_mtp.storage.layout import RunFolder

if TYPE_CHECKING:
    import torch

    from weighted_mtp.train.distributed import Dist
    from weighted_mtp.train.lora import TrainedModel

log = logging.getLogger(__name__)

PREFIX = "step-"
STATE_FILE = "trainer_state.json"
MANIFEST = "SHA256SUMS"
DCP_METADATA = ".metadata"
DAMAGED = ".damaged"
_FOLDER = re.compile(rf"{PREFIX}\d{{8}}")


@dataclass(frozen=True)
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int  # optimizer steps done = global batches consumed (the data position)
    total_steps: int  # the schedule's planned length
    tokens_seen: int
    wall_s: float
    world: int  # ranks of the run that wrote it (informational; DCP reshards)
    rng: str = "torch.manual_seed(seed_for(seed, step, rank)) before every step"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return RunFolder(run_dir).checkpoints / f"{PREFIX}{step:08d}"


def completed_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints under their final name, oldest first: renamed there only when complete
    (temporary and damaged ones are never listed; whether one verifies is `verify`'s). Only
    folders belong in `checkpoints/`: anything else (a file, a symlink) is one error naming
    it, never skipped (a file in place of the newest checkpoint would have the step trained
    again and every later resume fail)."""
    folder = RunFolder(run_dir).checkpoints
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if TEMP_MARKER in entry.name:
            continue  # a killed write's leftover: the run's claim removes it
        if entry.is_symlink() or not entry.is_dir():
            what = "a symlink" if entry.is_symlink() else "a file"
            raise WmtpError(
                f"checkpoints/{entry.name} is {what}, not a checkpoint folder",
                path=entry,
                hint="move it out of the run's checkpoints folder, then run again",
            )
        if _FOLDER.fullmatch(entry.name):
            found.append(entry)
    return found


def step_of(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


# -- hashing as DCP writes -----------------------------------------------------------------


@dataclass(frozen=True)
class Hashed:
    """A file's SHA-256 taken from the bytes written, and how many bytes that was."""

    sha256: str
    size: int


_PIECE = 1 << 20  # bytes written, then hashed while cached


class _HashingStream:
    """A file DCP writes sequentially, hashed on the way. A seek makes the hash unusable
    (`sequential` False): that file is then hashed again from disk."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0
        self.sequential = True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _PIECE):
            piece = view[start : start + _PIECE]
            self.raw.write(piece)
            self.digest.update(piece)  # still in the CPU cache; hashlib releases the GIL
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.sequential = False
        return self.raw.seek(offset, whence)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()


class _HashingFileSystem(FileSystem):
    """DCP's local file system, recording each written file's SHA-256 by name."""

    def __init__(self) -> None:
        self.hashed: dict[str, Hashed] = {}

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        path = Path(path)
        with path.open("wb") as raw:
            hashing = _HashingStream(raw)
            yield hashing
        if hashing.sequential:
            self.hashed[path.name] = Hashed(hashing.digest.hexdigest(), hashing.size)

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        super().rename(path, new_path)
        hashed = self.hashed.pop(Path(path).name, None)
        if hashed is not None:
            self.hashed[Path(new_path).name] = hashed

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        super().rm_file(path)
        self.hashed.pop(Path(path).name, None)


def _hashing_writer(folder: Path) -> tuple[FileSystemWriter, _HashingFileSystem]:
    """DCP's file writer (defaults kept) on the hashing file system."""
    writer = FileSystemWriter(folder)
    hashing = _HashingFileSystem()
    writer.fs = hashing
    return writer, hashing


def _checksums(folder: Path, hashed: dict[str, Hashed]) -> dict[str, str]:
    """Every file in the finished `folder` with its SHA-256: as hashed while written when
    the size on disk agrees, else (a file written otherwise) read again."""
    sums = {}
    for path in sorted(folder.iterdir()):
        known = hashed.get(path.name)
        if known is not None and path.stat().st_size == known.size:
            sums[path.name] = known.sha256
        else:
            sums[path.name] = sha256_file(path)
    return sums


def _state_dict_options(model: TrainedModel) -> Any:
    """With LoRA, the trainable tensors only; loading them leaves the frozen base as loaded
    from the model asset (DCP's load has already failed if a saved tensor was missing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = model.frozen_base
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def _tensors(
    model: TrainedModel, optimizer: torch.optim.Optimizer, objective_state: dict[str, Any]
) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(
        model.core, optimizer, options=_state_dict_options(model)
    )
    return {"model": model_state, "optim": optim_state, "objective": objective_state}


def _bytes_needed(model: TrainedModel) -> int:
    """Saved parameters plus two AdamW moments, float32 (all ranks' shares together)."""
    saved = model.trainable_parameters() if model.frozen_base else model.core.parameters()
    return sum(p.numel() for p in saved) * 4 * 3


@contextmanager
def _single_process_intended() -> Iterator[None]:
    """DCP warns whenever it saves or loads without a process group, although `no_dist`
    is passed on purpose (one process): silence only that."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    model: TrainedModel,
    optimizer: torch.optim.Optimizer,
    objective_state: dict[str, Any],
    dist_info: Dist,
) -> Path:
    """Write step `state.step`'s checkpoint atomically on every rank; returns its folder."""
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".{final.name}{TEMP_MARKER}partial")
    error: str | None = None
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ensure_free_space(final.parent, _bytes_needed(model), "a checkpoint")
        except WmtpError as exc:
            error = exc.line()
    error = dist_info.broadcast_object(error)
    if error is not None:
        raise WmtpError(f"{error} (last good checkpoint kept)")
    writer, hashing = _hashing_writer(tmp)
    try:
        with _single_process_intended():
            state_dict_saver.save(
                _tensors(model, optimizer, objective_state),
                checkpoint_id=tmp,
                storage_writer=writer,
                no_dist=not dist_info.sharded,
            )
        hashed = {
            k: v for part in dist_info.all_gather_object(hashing.hashed) for k, v in part.items()
        }
        if dist_info.is_main:
            _seal(tmp, state, hashed)
            tmp.rename(final)
            _fsync_dir(final.parent)
    except OSError as exc:
        if dist_info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise WmtpError(
                f"cannot write checkpoint step {state.step}: {exc.strerror}",
                path=final,
                hint="free disk space, then --resume (the last good checkpoint is intact)",
            ) from None
        raise
    dist_info.barrier()
    return final


def _seal(folder: Path, state: TrainerState, hashed: dict[str, Hashed]) -> None:
    """Complete a written checkpoint (rank 0): the trainer state, then `SHA256SUMS` of
    every file, written last and atomically."""
    text = dumps_json(asdict(state))
    write_text(folder / STATE_FILE, text)
    data = text.encode("utf-8")
    hashed = {**hashed, STATE_FILE: Hashed(hashlib.sha256(data).hexdigest(), len(data))}
    write_sha256sums(folder / MANIFEST, _checksums(folder, hashed))


def _set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the list (kept, for a look): `step-N.damaged`."""
    target, n = path.with_name(path.name + DAMAGED), 1
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED}-{n}")
    path.rename(target)
    return target


def prune_checkpoints(run_dir: Path, keep: int, dist_info: Dist) -> None:
    """Keep the `keep` newest checkpoints with a `SHA256SUMS` (and any newer without);
    remove the older ones, each renamed to a temporary name first, so a kill never leaves
    a half-removed checkpoint under its final name."""
    if not dist_info.is_main:
        return
    found = completed_checkpoints(run_dir)
    sealed = [p for p in found if (p / MANIFEST).is_file()]
    if len(sealed) < keep:
        return
    oldest_kept = sealed[-keep]
    for old in found:
        if old < oldest_kept:
            doomed = old.with_name(f".{old.name}{TEMP_MARKER}pruned")
            old.rename(doomed)
            shutil.rmtree(doomed)


# -- verification on resume ----------------------------------------------------------------


def _verify_names(path: Path) -> tuple[dict[str, str], str | None]:
    """The checksums `path` recorded, or why it has none usable."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return {}, f"{MANIFEST} is missing"
    try:
        sums = read_sha256sums(manifest)
    except WmtpError as exc:
        return {}, f"{MANIFEST} is unreadable ({exc.what})"
    for required in (DCP_METADATA, STATE_FILE):
        if required not in sums:
            return {}, f"{MANIFEST} does not list {required}"
    held = sorted(
        entry.relative_to(path).as_posix()
        for entry in path.rglob("*")
        if entry.is_symlink() or not entry.is_dir()
    )
    unlisted = [name for name in held if name != MANIFEST and name not in sums]
    if unlisted:
        return {}, f"{MANIFEST} does not list {unlisted[0]}, which the checkpoint holds"
    return sums, None


def _file_problem(path: Path, name: str, expected: str) -> str | None:
    target = path / name
    if not target.is_file():
        return f"{name} is missing"
    if sha256_file(target) != expected:
        return f"{name} does not match its SHA-256 (changed or truncated)"
    return None


def verify(path: Path, dist_info: Dist) -> str | None:
    """Why the checkpoint at `path` is damaged (naming the first bad file), or None if every
    file matches its `SHA256SUMS`. The ranks hash a share of the files each (threads within
    a rank) and all return the same verdict."""
    sums, problem = dist_info.broadcast_object(
        _verify_names(path) if dist_info.is_main else ({}, None)
    )
    if problem is not None:
        return problem
    names = sorted(sums)[dist_info.rank :: dist_info.world]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        mine = [
            p for p in pool.map(lambda n: _file_problem(path, n, sums[n]), names) if p is not None
        ]
    found = sorted(p for part in dist_info.all_gather_object(mine) for p in part)
    return found[0] if found else None


def resume_point(run_dir: Path, dist_info: Dist) -> Path | None:
    """The newest checkpoint that verifies, the same on every rank; None when the run has
    none yet. Each newer damaged one is named in one line and set aside (kept); when none
    verifies, one error and nothing is changed."""
    listed: tuple[list[Path], str | None] = ([], None)
    if dist_info.is_main:
        try:
            listed = (completed_checkpoints(run_dir), None)
        except WmtpError as exc:
            listed = ([], exc.line())
    found, error = dist_info.broadcast_object(listed)
    if error is not None:
        raise WmtpError(error)
    damaged: list[tuple[Path, str]] = []
    for path in reversed(found):
        problem = verify(path, dist_info)
        if problem is None:
            if dist_info.is_main:
                for bad, why in damaged:
                    kept = _set_aside(bad)
                    log.warning(
                        f"checkpoint step {step_of(bad)} is damaged: {why} [{bad}]; kept as "
                        f"{kept.name}, resuming from step {step_of(path)}"
                    )
            dist_info.barrier()
            return path
        damaged.append((path, problem))
    if damaged:
        newest, why = damaged[0]
        raise WmtpError(
            f"no checkpoint of this run verifies; the newest, step {step_of(newest)}: {why}",
            path=newest,
            hint="restore the run folder from a copy, or start a new run",
        )
    return None


def load_checkpoint(
    path: Path,
    model: TrainedModel,
    optimizer: torch.optim.Optimizer,
    objective_state: dict[str, Any],
) -> TrainerState:
    """Load a checkpoint into the (already sharded) model and optimizer, in place; the
    objective's state is filled into `objective_state`."""
    import torch.distributed
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = read_json(path / STATE_FILE, "trainer state")
    tensors = _tensors(model, optimizer, objective_state)
    with _single_process_intended():
        state_dict_loader.load(
            tensors, checkpoint_id=path, no_dist=not torch.distributed.is_initialized()
        )
    set_state_dict(
        model.core,
        optimizer,
        model_state_dict=tensors["model"],
        optim_state_dict=tensors["optim"],
        options=_state_dict_options(model),
    )
    try:
        return TrainerState(**state)
    except TypeError:
        raise WmtpError("trainer state is malformed", path=path / STATE_FILE) from None
