"""Bad training inputs fail with one line before any model loads, and never overwrite results silently."""

from __future__ import annotations

import pytest
import torch

from tvprompt.errors import TvpError, UsageError
from tvprompt.tasks import TaskSpec
from tvprompt.training.checkpoint import load_checkpoint
from tvprompt.training.config import absolute_paths
from tvprompt.training.loop import resolve_config, train

from ._data_fixtures import write_imagefolder
from .toy import ToyAdapter, ToyDataset, ToySpec, toy_batches

torch.set_num_threads(1)


def _cfg(**flags):
    base = {"sources": ["toy"], "task": "toy", "data": "toy", "steps": 2, "batch_size": 4, "image_size": 16,
            "width": 3, "val_split": None, "progress": False, "seed": 5, "fca": 0.0, "tse": 0.0}
    base.update(flags)
    return resolve_config("tvp", flags=base)


def _run(cfg, **kw):
    return train(cfg, sources=[ToyAdapter(0)], spec=ToySpec(), train_set=ToyDataset(8), batch_fn=toy_batches, **kw)


class NoModels(list):
    """Stands in for the source models: touching them means a model would have loaded."""

    def __iter__(self):
        raise AssertionError("a model was loaded before the inputs were checked")


def test_misspelt_task_key_is_an_error_with_a_suggestion(tmp_path):
    f = tmp_path / "task.yaml"
    f.write_text("version: 1\nname: t\ninstrution: 'What is this?'\nchoices: [a, b]\n")
    with pytest.raises(TvpError, match=r"task.yaml: unknown key\(s\) 'instrution'; did you mean 'instruction'\?"):
        TaskSpec.from_yaml(f)


def test_output_that_is_a_file_fails_before_models_load(tmp_path):
    f = tmp_path / "out.txt"
    f.write_text("notes")
    with pytest.raises(UsageError, match=r"^--output .*out.txt: is a file; give a folder"):
        train(_cfg(output=str(f)), sources=NoModels(), spec=ToySpec(), train_set=ToyDataset(8), batch_fn=toy_batches)
    assert f.read_text() == "notes"


def test_earlier_prompt_without_checkpoint_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    first = _run(_cfg(output=str(out), ckpt_every=0))
    (out / "checkpoint").rename(tmp_path / "moved")  # e.g. deleted to save space
    before = (out / "prompt" / "prompt.safetensors").read_bytes()
    with pytest.raises(UsageError, match=r"holds prompt/ of an earlier run; pass --overwrite"):
        _run(_cfg(output=str(out), seed=9))
    assert (out / "prompt" / "prompt.safetensors").read_bytes() == before
    again = _run(_cfg(output=str(out), seed=9, overwrite=True))
    assert not torch.equal(again.delta, first.delta)
    assert (out / "prompt" / "prompt.safetensors").read_bytes() != before


def test_relative_task_and_data_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "t.yaml").write_text("version: 1\nname: t\n")
    _run(_cfg(task="t.yaml", data="d", output="out", ckpt_every=1))
    saved = load_checkpoint(tmp_path / "out")[1]
    assert saved["task"] == str(tmp_path / "t.yaml") and saved["data"] == str(tmp_path / "d")
    values = absolute_paths({"task": "cifar10", "data": "hf-hub-name", "lr": 1.0})
    assert values == {"task": "cifar10", "data": "hf-hub-name", "lr": 1.0}  # names, not paths, stay as given


def test_unreadable_train_split_fails_before_models_and_writes_nothing(tmp_path):
    data = write_imagefolder(tmp_path / "data", ["cat", "dog"], per_class=4)
    for f in data.rglob("*.png"):
        f.write_bytes(b"not a png")
    task = tmp_path / "task.yaml"
    task.write_text("version: 1\nname: pets\nformat: imagefolder\n")
    out = tmp_path / "out"
    cfg = _cfg(task=str(task), data=str(data), output=str(out))
    with pytest.raises(TvpError, match=r"none of the \d+ images of the 'train' split is readable \(first: .*png"):
        train(cfg, sources=NoModels())
    assert not out.exists() or not any(out.iterdir())
