"""The trainer on a tiny micro-mtp: learning, exact resume, heads, weightings, bad input."""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass

import pytest
import torch
from reference import weighted_mtp_loss

from weighted_mtp.errors import WmtpError
from weighted_mtp.train import trainer as trainer_module
from weighted_mtp.train.config import Setting, load_config, with_overrides
from weighted_mtp.train.distributed import Dist
from weighted_mtp.train.experiments import weighted_mtp
from weighted_mtp.train.run_setup import resolve_inputs
from weighted_mtp.train.trainer import Trainer, prepare_run_dir, train
from weighted_mtp.train.weightings import Weights

SINGLE = Dist(rank=0, world=1, device=torch.device("cpu"))
FAST = {
    "batch_size": 4,
    "micro_batch_size": 2,
    "max_steps": 3,
    "lr": 1e-3,
    "warmup_ratio": 0.0,
    "eval_every": 0,
    "eval_batches": 1,
    "checkpoint_every": 0,
}


def config_of(**over):
    return with_overrides(load_config(None, micro=True), {**FAST, **over}, "test")


def make_trainer(layout, run_dir, weighting=None, **over):
    config = config_of(**over)
    assets = resolve_inputs(layout, config.model, config.data, config.small)
    prepare_run_dir(run_dir, config, SINGLE)
    make = weighted_mtp(lambda setup: weighting) if weighting is not None else None
    return Trainer(layout, config, assets, run_dir, SINGLE, make)


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.core.state_dict().items()}


def train_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in lines if r["kind"] == "train"]


def test_loss_falls_when_one_small_batch_is_repeated(train_storage, tmp_path):
    trainer = make_trainer(train_storage, tmp_path / "run", batch_size=2, lr=1e-2, max_steps=10)
    fixed = trainer.plan.micro_batches(0, 0)
    trainer.plan.micro_batches = lambda step, rank: fixed
    losses = [trainer.train_step()["loss"] for _ in range(10)]
    assert losses[-1] < 0.75 * losses[0], losses


@pytest.mark.parametrize("lora", [False, True])
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(train_storage, tmp_path, lora):
    over = {"max_steps": 3, "lora.enabled": lora, "lora.dropout": 0.2, "lora.r": 4}
    whole = make_trainer(train_storage, tmp_path / "whole", **over)
    whole.run()
    first = make_trainer(train_storage, tmp_path / "parts", **over)
    stopped = first.run(stop_at=2)
    assert not stopped.completed and stopped.steps_done == 2
    assert not (tmp_path / "parts" / "summary.json").exists()
    second = make_trainer(train_storage, tmp_path / "parts", **over)
    second.resume()
    assert second.step == 2
    assert second.run().completed
    a, b = params(whole), params(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train_lines(tmp_path / "whole") == train_lines(tmp_path / "parts")
    if lora:  # the adapters moved, the frozen base did not
        base = make_trainer(train_storage, tmp_path / "base", **over)
        frozen = params(base)
        changed = {k for k in a if not torch.equal(a[k], frozen[k])}
        assert changed and all("lora_" in k for k in changed)


def test_sequential_heads_train_like_the_naive_oracle(train_storage, tmp_path):
    results = []
    for naive in (True, False):
        trainer = make_trainer(
            train_storage, tmp_path / f"naive-{naive}", max_steps=2, naive_heads=naive
        )
        trainer.run()
        results.append((params(trainer), train_lines(tmp_path / f"naive-{naive}")))
    (a, la), (b, lb) = results
    initial = params(make_trainer(train_storage, tmp_path / "initial", max_steps=2))
    for k in a:
        # float32 sums in another order; AdamW magnifies differences of near-zero gradients
        # for a few elements, so compare against the update (float64 equality: test_losses).
        assert (a[k] - b[k]).norm() <= 0.02 * (a[k] - initial[k]).norm(), k
    for x, y in zip(la, lb, strict=True):
        assert x[1] == pytest.approx(y[1], rel=1e-5)


def test_n_future_1_trains_the_next_token_head_only(train_storage, tmp_path):
    trainer = make_trainer(train_storage, tmp_path / "ntp", n_future=1, max_steps=1)
    before = params(trainer)
    record = trainer.train_step()
    after = params(trainer)
    assert len(record["per_head"]) == 1
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head0 = f"layers.{trainer.model.core.params.n_trunk_layers}."  # the last block
    assert any(k.startswith(head0) for k in changed)
    assert not any(k.startswith("extra_heads.") for k in changed)


@dataclass
class RandomPerHead:
    """A per-head weighting: [B, S, H] weights, normalised by their sum."""

    name: str = "random"
    normalize: str = "weight"

    def weigh(self, batch, ctx):
        gen = torch.Generator().manual_seed(ctx.step)
        values = torch.rand((*batch.tokens.shape, ctx.n_heads), generator=gen)
        return Weights(values, {"mean": float(values.mean())})

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_pluggable_weighting_sets_the_loss(train_storage, tmp_path):
    weighting = RandomPerHead()
    trainer = make_trainer(
        train_storage, tmp_path / "w", weighting, batch_size=2, naive_heads=False
    )
    (batch,) = trainer.plan.micro_batches(0, 0)
    with torch.no_grad():
        logits = trainer.model.core(batch.tokens)
    values = weighting.weigh(batch, type("C", (), {"step": 0, "n_heads": 2})()).values
    expected = weighted_mtp_loss(logits, batch.tokens, batch.loss_mask, values, "weight")
    record = trainer.train_step()
    assert record["normalize"] == "weight" and "mean" in record["weights"]
    assert record["loss"] == pytest.approx(expected.loss.item(), rel=1e-5)
    assert record["per_head"] == pytest.approx(expected.per_head.tolist(), rel=1e-5)


def test_a_completed_run_has_its_folder(train_storage, tmp_path):
    from weighted_mtp.models.adapter import load_mtp_model

    config = config_of(max_steps=2, eval_every=1, checkpoint_every=1, keep_checkpoints=1)
    result = train(train_storage, config, run_dir=tmp_path / "run")
    run = tmp_path / "run"
    assert result.completed and (run / "config.yaml").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    kinds = [json.loads(x)["kind"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["train", "validation", "train", "validation"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["tokens_seen"] > 0
    assert "models_v2/micro-mtp/safetensors/model.safetensors" in summary["assets"]
    assert load_mtp_model(run / "final").params.n_future_tokens == 2
    with pytest.raises(WmtpError, match="already holds a baseline run"):
        train(train_storage, config, run_dir=run)


def test_a_sequence_longer_than_the_context_is_refused(train_storage, tmp_path):
    from weighted_mtp.models.adapter import read_mtp_params

    context = read_mtp_params(train_storage.model("micro-mtp")).max_seq_len
    with pytest.raises(
        WmtpError, match=f"seq_len {context + 1} is longer than the model's context"
    ):
        train(train_storage, config_of(seq_len=context + 1), run_dir=tmp_path / "run")


@pytest.fixture
def storage_copy(train_storage, tmp_path):
    from weighted_mtp.storage.layout import Layout

    shutil.copytree(train_storage.root, tmp_path / "storage", symlinks=True)
    return Layout(tmp_path / "storage")


def test_a_model_that_does_not_verify_is_refused(storage_copy, tmp_path):
    weights = storage_copy.model("micro-mtp").weights
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WmtpError, match="model micro-mtp does not verify"):
        train(storage_copy, config_of(), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_dataset_that_is_not_prepared_is_refused(storage_copy, tmp_path):
    shutil.rmtree(storage_copy.dataset("codecontests").stats)
    with pytest.raises(WmtpError, match=r"dataset codecontests is not prepared.*wmtp data prepare"):
        train(storage_copy, config_of(), run_dir=tmp_path / "run")


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(
    train_storage, tmp_path, monkeypatch
):
    from torch.distributed.checkpoint import state_dict_saver

    real_save, calls = state_dict_saver.save, []

    def save_until_full(state, checkpoint_id, **options):
        calls.append(checkpoint_id)
        if len(calls) == 2:
            checkpoint_id.mkdir(parents=True, exist_ok=True)
            (checkpoint_id / "__0_0.distcp").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(state, checkpoint_id=checkpoint_id, **options)

    monkeypatch.setattr(state_dict_saver, "save", save_until_full)
    run = tmp_path / "run"
    with pytest.raises(WmtpError, match="cannot write checkpoint step 2: No space left") as error:
        train(train_storage, config_of(checkpoint_every=1), run_dir=run)
    assert "last good checkpoint is intact" in error.value.line()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    monkeypatch.setattr(state_dict_saver, "save", real_save)
    resumed = train(train_storage, config_of(checkpoint_every=1), run_dir=run, resume=True)
    assert resumed.completed and resumed.steps_done == 3


@pytest.mark.parametrize("final_save", ["merged", "adapter"])
def test_lora_saves_merged_weights_or_the_adapter_alone(train_storage, tmp_path, final_save):
    from safetensors.torch import load_file

    from weighted_mtp.models.adapter import load_mtp_model

    over = {"max_steps": 1, "lora.enabled": True, "lora.r": 4, "lora.dropout": 0.0}
    trainer = make_trainer(train_storage, tmp_path / "run", final_save=final_save, **over)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters change the output
        for name, p in trainer.model.core.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trainer.run()
    final = tmp_path / "run" / "final"
    if final_save == "adapter":
        tensors = load_file(final / "adapter_model.safetensors")
        assert tensors and all("lora_A" in k or "lora_B" in k for k in tensors)
        assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
        return
    (batch,) = trainer.plan.micro_batches(0, 0)[:1]
    merged = load_mtp_model(final)
    trainer.model.core.eval()
    with torch.no_grad():
        want = trainer.model.core(batch.tokens)
        got = merged(batch.tokens)
        base = load_mtp_model(train_storage.model("micro-mtp").root)(batch.tokens)
    assert (got - want).abs().max() < 0.1 * (base - want).abs().max()


def test_a_resumed_run_keeps_its_config(train_storage, tmp_path):
    from weighted_mtp.train.run_setup import resolve_run

    run = tmp_path / "run"
    prepare_run_dir(run, config_of(), SINGLE)

    def resume(*settings: Setting, experiment: str = "baseline"):
        return resolve_run(
            train_storage, experiment, small=True, settings=settings, file=None, out=run,
            resume=True,
        )  # fmt: skip

    config, where = resume(Setting("max_steps", 3))
    assert where == run and config == config_of()
    with pytest.raises(WmtpError, match="a resumed run keeps its config; lr differ"):
        resume(Setting("lr", 0.5))
    with pytest.raises(WmtpError, match="holds a baseline run, not critic"):
        resume(experiment="critic")


@dataclass
class NanAtStep:
    """Uniform weights, NaN on every target from step `bad` (0-based) on."""

    bad: int
    name: str = "nan"
    normalize: str = "count"

    def weigh(self, batch, ctx):
        values = torch.ones(batch.tokens.shape)
        if ctx.step >= self.bad:
            values[batch.loss_mask] = float("nan")
        return Weights(values)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_a_non_finite_loss_stops_the_run_naming_the_step(train_storage, tmp_path):
    run = tmp_path / "run"
    make = weighted_mtp(lambda setup: NanAtStep(bad=1))
    config = config_of(max_steps=3, checkpoint_every=1)
    with pytest.raises(WmtpError, match=r"^step 2: the loss is nan; the run stops") as error:
        train(train_storage, config, run_dir=run, make_objective=make)
    assert "\n" not in error.value.line()
    assert not (run / "final").exists() and not (run / "summary.json").exists()
    assert [r[0] for r in train_lines(run)] == [1]  # the bad step is not logged
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000001"]


def test_every_rank_returns_after_the_run_folder_is_written(train_storage, tmp_path, monkeypatch):
    """A rank that returned before rank 0 wrote summary.json found the run unfinished when
    the suite went on to evaluate it: the run ends with a barrier after the last write."""
    events = []
    monkeypatch.setattr(Dist, "barrier", lambda self: events.append("barrier"))
    written = trainer_module.write_json
    monkeypatch.setattr(
        trainer_module,
        "write_json",
        lambda path, value: (written(path, value), events.append(path.name)),
    )
    make_trainer(train_storage, tmp_path / "run", max_steps=1).run()
    assert "barrier" in events[events.index("summary.json") :]
