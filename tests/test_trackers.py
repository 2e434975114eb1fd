"""``--report-to``: metric rows reach accelerate's trackers; TensorBoard's event file is read back."""

import json

import pytest
import torch

from tvprompt.errors import UsageError
from tvprompt.training.config import TrainConfig
from tvprompt.training.loop import resolve_config, train
from tvprompt.training.trackers import check_report_to, resolve_trackers

from .toy import ToyAdapter, ToyDataset, ToySpec, toy_batches

torch.set_num_threads(1)


def _cfg(**flags):
    base = {"sources": ["toy"], "task": "toy", "data": "toy", "steps": 4, "batch_size": 4, "image_size": 16,
            "width": 3, "val_split": "val", "val_every": 2, "progress": False, "seed": 5, "lr": 30.0}
    return resolve_config("evp", flags={**base, **flags})


def _scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("how", [{"report_to": ["tensorboard"]}, {"tensorboard": True}])
def test_tensorboard_event_file_holds_every_metric_row(tmp_path, how):
    cfg = _cfg(output=str(tmp_path), **how)
    assert cfg.report_to == ["tensorboard"]
    train(cfg, sources=[ToyAdapter(0)], spec=ToySpec(), train_set=ToyDataset(8), val_set=ToyDataset(9, seed=1),
          batch_fn=toy_batches)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = _scalars(tmp_path / "tensorboard")
    train_rows = [r for r in rows if "loss" in r]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    for (step, value), row in zip(scalars["train/loss"], train_rows, strict=True):
        assert step == row["step"] and value == pytest.approx(row["loss"], rel=1e-6)
    assert [s for s, _ in scalars["train/lr"]] == [1, 2, 3, 4]
    val_rows = [r for r in rows if r.get("split") == "val"]
    assert [(s, pytest.approx(v)) for s, v in scalars["val/accuracy"]] == [(r["step"], r["accuracy"]) for r in val_rows]
    assert [s for s, _ in scalars["val/accuracy"]] == [0, 2, 4]
    assert "train/step" not in scalars and "train/total_steps" not in scalars


def test_report_to_validates_names():
    assert check_report_to(["none"]) == []
    assert check_report_to(["tensorboard", "tensorboard"]) == ["tensorboard"]
    with pytest.raises(UsageError, match="'tensorbord' is not one of"):
        TrainConfig(report_to=["tensorbord"])
    with pytest.raises(UsageError, match="'none' cannot be combined"):
        TrainConfig(report_to=["none", "wandb"])
    assert TrainConfig(report_to="tensorboard").report_to == ["tensorboard"]


def test_a_tracker_that_is_not_installed_fails_before_training(monkeypatch):
    import tvprompt.training.trackers as trackers

    monkeypatch.setattr(trackers, "installed", lambda name: name == "tensorboard")
    with pytest.raises(UsageError, match=r"pip install 'tvprompt\[wandb\]'"):
        resolve_trackers(["wandb"])
    assert resolve_trackers(["all"]) == ["tensorboard"]


def test_cli_report_to_flag_reaches_the_config(tmp_path, tvp):
    res = tvp("train", "--report-to", "nonsense", "--source", "zoo:llava-p8")
    assert res.returncode == 2 and "invalid choice: 'nonsense'" in res.stderr
    from tvprompt.cli import build_parser
    from tvprompt.cli.train import flag_values

    args = build_parser().parse_args(["train", "--report-to", "tensorboard", "wandb", "--tensorboard"])
    flags = flag_values(args)
    assert flags["report_to"] == ["tensorboard", "wandb"] and flags["tensorboard"] is True
