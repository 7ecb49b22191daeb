"""Atomic, resharding checkpoints through `torch.distributed.checkpoint` (DCP).

A checkpoint is the folder `checkpoints/step-NNNNNNNN/`: DCP's files (model and optimizer
state, each rank writing its shards, so a run resumes on a different number of ranks) and
`trainer_state.json` (step, tokens seen, the learning-rate schedule, the data position and
the RNG rule). It is written under a temporary name and renamed when complete, so a kill or a
full disk leaves the previous checkpoint as the latest. With LoRA only the trainable
parameters are saved: the frozen base is the verified model asset itself.
"""

from __future__ import annotations

import errno
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from weighted_mtp.errors import WmtpError
from weighted_mtp.storage.atomic import (
    TEMP_MARKER,
    _fsync_dir,
    ensure_free_space,
    read_json,
    write_json,
)
from weighted_mtp.storage.layout import RunFolder

if TYPE_CHECKING:
    import torch

    from weighted_mtp.train.distributed import Dist

PREFIX = "step-"
STATE_FILE = "trainer_state.json"


class Trained(Protocol):
    """What a checkpoint saves: the policy (`lora.Policy`) or a stage-1 model."""

    @property
    def core(self) -> torch.nn.Module: ...

    @property
    def frozen_base(self) -> bool:
        """Only the trainable tensors are saved (LoRA): the base is the model asset."""
        ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...


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
    """Finished checkpoints, oldest first (temporary folders are never listed)."""
    folder = RunFolder(run_dir).checkpoints
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()
    )


def _state_dict_options(policy: Trained) -> Any:
    """With LoRA, the trainable tensors only; loading them leaves the frozen base as loaded
    from the model asset (DCP's load has already failed if a saved tensor was missing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = policy.frozen_base
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def _tensors(
    policy: Trained, optimizer: torch.optim.Optimizer, weighting_state: dict
) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(
        policy.core, optimizer, options=_state_dict_options(policy)
    )
    return {"model": model_state, "optim": optim_state, "weighting": weighting_state}


def _bytes_needed(policy: Trained) -> int:
    """Saved parameters plus two AdamW moments, float32 (all ranks' shares together)."""
    saved = policy.trainable_parameters() if policy.frozen_base else policy.core.parameters()
    return sum(p.numel() for p in saved) * 4 * 3


@contextmanager
def _single_process_intended() -> Iterator[None]:
    """DCP warns whenever it saves or loads without a process group, although `no_dist`
    is passed on purpose (one process, or stage 1 on the first rank): silence only that."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    policy: Trained,
    optimizer: torch.optim.Optimizer,
    weighting_state: dict,
    dist_info: Dist,
) -> Path:
    """Write step `state.step`'s checkpoint atomically on every rank; returns its folder."""
    import torch.distributed.checkpoint as dcp

    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".{final.name}{TEMP_MARKER}partial")
    error: str | None = None
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ensure_free_space(final.parent, _bytes_needed(policy), "a checkpoint")
        except WmtpError as exc:
            error = exc.line()
    error = dist_info.broadcast_object(error)
    if error is not None:
        raise WmtpError(f"{error} (last good checkpoint kept)")
    try:
        with _single_process_intended():
            dcp.save(
                _tensors(policy, optimizer, weighting_state),
                checkpoint_id=tmp,
                no_dist=not dist_info.sharded,
            )
        dist_info.barrier()
        if dist_info.is_main:
            write_json(tmp / STATE_FILE, asdict(state))
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


def prune_checkpoints(run_dir: Path, keep: int, dist_info: Dist) -> None:
    if dist_info.is_main:
        for old in completed_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)


def load_checkpoint(
    path: Path,
    policy: Trained,
    optimizer: torch.optim.Optimizer,
    weighting_state: dict,
) -> TrainerState:
    """Load a checkpoint into the (already sharded) policy and optimizer, in place; the
    weighting's state is filled into `weighting_state`."""
    import torch.distributed
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = read_json(path / STATE_FILE, "trainer state")
    tensors = _tensors(policy, optimizer, weighting_state)
    with _single_process_intended():
        dcp.load(tensors, checkpoint_id=path, no_dist=not torch.distributed.is_initialized())
    set_state_dict(
        policy.core,
        optimizer,
        model_state_dict=tensors["model"],
        optim_state_dict=tensors["optim"],
        options=_state_dict_options(policy),
    )
    try:
        return TrainerState(**state)
    except TypeError:
        raise WmtpError("trainer state is malformed", path=path / STATE_FILE) from None
