"""Stage 1 (critic, ref-tune) in the one trainer: checkpoints, exact resume, and the tuned
reference's dtype."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from weighted_mtp.storage.layout import MICRO_REF
from weighted_mtp.train import checkpoint as ckpt
from weighted_mtp.train.config import Setting, build_config
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.run_setup import resolve_inputs
from weighted_mtp.train.trainer import Trainer, prepare_run_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {
    "batch_size": 4,
    "micro_batch_size": 2,
    "max_steps": 3,
    "warmup_ratio": 0.0,
    "eval_every": 2,
    "eval_batches": 1,
    "checkpoint_every": 0,
}
LORA = {"lora.enabled": True, "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.2}


SINGLE = Dist(rank=0, world=1, device=torch.device("cpu"))


def make_stage(layout, kind: str, run_dir: Path, **over) -> Trainer:
    settings = [Setting(k, v) for k, v in (FAST | over).items()]
    config = build_config(kind, small=True, settings=settings)
    assets = resolve_inputs(layout, config.model, config.data, config.small)
    prepare_run_dir(run_dir, config, SINGLE)
    return Trainer(layout, config, assets, run_dir, SINGLE)


def params(stage: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in stage.model.core.state_dict().items()}


def lines(run_dir: Path) -> list[dict]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("tokens_per_s", None)  # wall-clock dependent
    return records


@pytest.mark.parametrize(
    ("kind", "over"),
    [("critic", {}), ("critic", LORA), ("ref-tune", {}), ("ref-tune", LORA)],
    ids=["critic", "critic-lora", "ref-tune", "ref-tune-lora"],
)
def test_a_resumed_stage_one_run_ends_exactly_like_an_uninterrupted_one(
    weighted_storage, tmp_path, kind, over
):
    whole_dir, parts_dir = tmp_path / "whole", tmp_path / "parts"
    whole = make_stage(weighted_storage, kind, whole_dir, **over)
    assert whole.run().completed
    first = make_stage(weighted_storage, kind, tmp_path / "parts", **over)
    stopped = first.run(stop_at=2)
    assert not stopped.completed and stopped.steps_done == 2
    assert not (tmp_path / "parts" / "summary.json").exists()
    assert not (tmp_path / "parts" / "final").exists()
    assert [p.name for p in ckpt.completed_checkpoints(tmp_path / "parts")] == ["step-00000002"]
    (tmp_path / "parts" / "metrics.jsonl").open("a").write('{"step": 3, "kind": "train"}\n')

    # A fresh process would start from the model asset again: a new StageOne, then resume.
    second = make_stage(weighted_storage, kind, tmp_path / "parts", **over)
    second.resume()
    assert second.step == 2
    assert second.run().completed
    # Same process, same CPU kernels, same order: the resumed run is bit-identical (the RNG
    # of LoRA dropout is reseeded from (seed, step), AdamW's moments come from the checkpoint).
    a, b = params(whole), params(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert lines(tmp_path / "whole") == lines(tmp_path / "parts")
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole_dir, parts_dir)]
    assert summaries[0]["tokens_seen"] == summaries[1]["tokens_seen"] > 0
    # It trained. With LoRA only the adapters and the critic's value head move.
    initial = params(make_stage(weighted_storage, kind, tmp_path / "initial", **over))
    changed = {k for k in a if not torch.equal(a[k], initial[k])}
    assert changed
    if over:
        assert all(k.startswith("head.") or "lora_" in k for k in changed), changed


def test_stage_one_checkpoints_every_n_steps_and_keeps_the_last_ones(weighted_storage, tmp_path):
    stage = make_stage(
        weighted_storage, "critic", tmp_path / "run", checkpoint_every=1, keep_checkpoints=2
    )
    stage.run()
    names = [p.name for p in ckpt.completed_checkpoints(tmp_path / "run")]
    assert names == ["step-00000002", "step-00000003"]
    state = json.loads((tmp_path / "run" / "checkpoints" / names[-1] / ckpt.STATE_FILE).read_text())
    assert state["step"] == state["total_steps"] == 3 and state["world"] == 1


def test_resuming_with_another_step_count_is_refused(weighted_storage, tmp_path):
    from weighted_mtp.errors import WmtpError

    make_stage(weighted_storage, "ref-tune", tmp_path / "run").run(stop_at=1)
    longer = make_stage(weighted_storage, "ref-tune", tmp_path / "run", max_steps=5)
    with pytest.raises(WmtpError, match="the checkpoint planned 3 steps, this run 5"):
        longer.resume()


def test_the_tuned_reference_loads_in_transformers_in_its_stated_dtype(weighted_storage, tmp_path):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    stage = make_stage(weighted_storage, "ref-tune", tmp_path / "run", max_steps=1)
    stage.run()
    trained = params(stage)  # float32, as trained
    final = tmp_path / "run" / "final"
    # The Hugging Face layout, pointing at the saved files.
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").symlink_to(final / "configs" / "config.json")
    (hf / "model.safetensors").symlink_to(final / "safetensors" / "model.safetensors")
    stated = AutoConfig.from_pretrained(hf).dtype
    with safe_open(weighted_storage.model(MICRO_REF).weights, framework="pt") as handle:
        base_dtype = handle.get_tensor("model.norm.weight").dtype
    assert base_dtype != torch.float32  # (trained in float32: the case that could go wrong)
    assert stated == base_dtype  # the config stays the source's, and stays true:
    loaded = AutoModelForCausalLM.from_pretrained(hf, dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {stated}
    with safe_open(final / "safetensors" / "model.safetensors", framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {stated}  # noqa: SIM118
    state = loaded.state_dict()
    assert all(torch.equal(state[k], trained[k].to(stated)) for k in trained)
