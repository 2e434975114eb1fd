"""The paper's analyses in reduced mode, with a stand-in trainer and the toy adapter/task."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tvprompt.errors import UsageError
from tvprompt.evaluation.analyses import (
    CORRUPTIONS,
    TrainRecipe,
    ablation,
    corruption,
    cross_dataset,
    data_scale,
    width_sweep,
)
from tvprompt.evaluation.efficiency import efficiency, lora_targets, measure
from tvprompt.evaluation.evaluate import EvalSetup

from .eval_toys import ToyLMAdapter, make_prompt, toy_backends

TARGETS = ["toy:a", "toy:b"]


class FakeTrainer:
    """Makes a prompt whose border brightness encodes the recipe, and records each call."""

    def __init__(self):
        self.recipes = []

    def __call__(self, recipe: TrainRecipe, output):
        self.recipes.append(recipe)
        value = 0.3 + 0.5 * recipe.fraction * (1 + bool(recipe.fca)) / 2 + (0.1 if recipe.tse else 0)
        return make_prompt(output / "prompt", min(value, 1.0), width=recipe.width // 5, size=32, channel=0,
                           sources=recipe.sources, method=recipe.method)


@pytest.fixture
def base():
    return TrainRecipe(sources=["toy:a"], task="toy", data="train-data", width=20, guide="toy-guide")


def setup_():
    return EvalSetup(task="toy", data="test-data", batch_size=5)


def check_outputs(out, name, n_rows):
    doc = json.loads((out / f"{name}.json").read_text())
    assert doc["analysis"] == name and doc["reduced"] is True
    md = (out / f"{name}.md").read_text()
    assert (out / f"{name}.png").stat().st_size > 0
    assert sum(1 for line in md.splitlines() if line.startswith("| ")) == n_rows + 1
    return doc


def test_ablation_trains_four_variants_and_reuses_them(tmp_path, base):
    trainer, calls = FakeTrainer(), {}
    doc = ablation(base, TARGETS, setup_(), tmp_path, trainer=trainer, backends=toy_backends(calls), reduced=True)
    check_outputs(tmp_path, "ablation", 4)
    assert all(r.steps == 2 for r in trainer.recipes)  # reduced mode
    assert [(r.fca > 0, r.tse > 0) for r in trainer.recipes] == [(False, False), (True, False), (False, True),
                                                                   (True, True)]
    assert [r["label"] for r in doc["rows"]] == ["none", "FCA", "TSE", "FCA+TSE"]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    for row in doc["rows"]:  # the analysis rows are the evaluation's Δ
        for m in TARGETS:
            assert row["delta"][m] == results["transfer"][row["prompt"]][m]["delta"]["top1"]
    assert calls["loads"] == TARGETS  # one evaluation pass over all four prompts
    # rerun: same recipes -> no training, no evaluation
    trainer2, calls2 = FakeTrainer(), {}
    again = ablation(base, TARGETS, setup_(), tmp_path, trainer=trainer2, backends=toy_backends(calls2), reduced=True)
    assert trainer2.recipes == [] and "loads" not in calls2
    assert again["rows"] == doc["rows"]


def test_width_sweep_reduced(tmp_path, base):
    trainer = FakeTrainer()
    doc = width_sweep(base, TARGETS, setup_(), tmp_path, trainer=trainer, backends=toy_backends({}), reduced=True)
    check_outputs(tmp_path, "width", 2)
    assert sorted(r.width for r in trainer.recipes) == [10, 20]
    assert doc["x"] == [10, 20]


def test_data_scale_reduced(tmp_path, base):
    trainer = FakeTrainer()
    doc = data_scale(base, TARGETS, setup_(), tmp_path, trainer=trainer, backends=toy_backends({}), reduced=True)
    check_outputs(tmp_path, "data_scale", 2)
    assert [r.fraction for r in trainer.recipes] == [0.1, 1.0]
    assert doc["x"] == [10.0, 100.0]


def test_cross_dataset_evaluates_one_prompt_on_each_set(tmp_path, base):
    trainer, calls = FakeTrainer(), {}
    sets = [("toy", "set-one"), ("toy", "set-two")]
    doc = cross_dataset(sets, TARGETS, setup_(), tmp_path, base=base, trainer=trainer, backends=toy_backends(calls),
                        reduced=True)
    check_outputs(tmp_path, "cross_dataset", 2)
    assert len(trainer.recipes) == 1
    assert [o[0] for o in calls["opened"]] == ["set-one", "set-two"]
    assert len(doc["rows"]) == 2


def test_corruption_reduced_grid(tmp_path):
    prompt = make_prompt(tmp_path / "p", 0.9, channel=0)
    calls = {}
    doc = corruption(TARGETS, setup_(), tmp_path / "out", prompt=prompt, backends=toy_backends(calls), reduced=True)
    check_outputs(tmp_path / "out", "corruption", 3)  # 2 corruptions + mean row
    assert doc["corruptions"] == list(CORRUPTIONS[:2]) and doc["severities"] == [3] and doc["strength"] == "cifar10c"
    assert [o[2:] for o in calls["opened"]] == [(CORRUPTIONS[0], 3), (CORRUPTIONS[1], 3)]
    means = [doc["mean_delta"][c] for c in doc["corruptions"]]
    assert doc["overall_mean_delta"] == pytest.approx(sum(means) / 2)


def test_ablation_needs_a_guide(tmp_path, base):
    with pytest.raises(UsageError, match="--guide"):
        ablation(dataclasses.replace(base, guide=None), TARGETS, setup_(), tmp_path, trainer=FakeTrainer(),
                 backends=toy_backends({}))


def test_changed_recipe_retrains_in_a_clean_folder(tmp_path, base):
    trainer = FakeTrainer()
    width_sweep(base, TARGETS, setup_(), tmp_path, widths=[10], trainer=trainer, backends=toy_backends({}))
    (tmp_path / "train" / "p_10" / "leftover").write_text("x")
    width_sweep(dataclasses.replace(base, seed=1), TARGETS, setup_(), tmp_path, widths=[10], trainer=trainer,
                backends=toy_backends({}))
    assert [r.seed for r in trainer.recipes] == [0, 1]
    assert not (tmp_path / "train" / "p_10" / "leftover").exists()


def test_cross_dataset_needs_a_prompt_or_a_recipe(tmp_path):
    with pytest.raises(UsageError, match="--prompt"):
        cross_dataset([("toy", "x")], TARGETS, setup_(), tmp_path, backends=toy_backends({}))


def test_efficiency_prompt_lora_full(tmp_path):
    pytest.importorskip("peft")
    calls = {}
    b = toy_backends(calls)
    doc = efficiency("toy:a", "toy", "d", tmp_path, reduced=True, backends=b, image_size=32, width=4,
                     load_adapter=lambda m: ToyLMAdapter(m, calls))
    rows = {r["method"]: r for r in doc["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["prompt"]["trainable_params"] == 3 * (32 * 32 - 24 * 24)
    assert rows["full"]["trainable_params"] == 48 * 32 + 32 + 32 * 7 + 7
    assert rows["lora"]["trainable_params"] == 8 * (48 + 32) + 8 * (32 + 7)  # r=8 on both Linear layers
    assert all(r["step_ms"] > 0 for r in rows.values())
    check_outputs(tmp_path, "efficiency", 3)


def test_efficiency_full_finetuning_changes_weights_but_prompt_does_not():
    calls = {}
    adapters = []

    def load(m):
        adapters.append(ToyLMAdapter(m, calls))
        return adapters[-1]

    measure("toy:a", "toy", "d", methods=["prompt", "full"], steps=1, warmup=0, batch_size=4, image_size=32, width=4,
            backends=toy_backends(calls), load_adapter=load)
    ref = ToyLMAdapter("toy:a", {}).model.state_dict()
    assert all(torch.equal(v, adapters[0].model.state_dict()[k]) for k, v in ref.items())
    assert not all(torch.equal(v, adapters[1].model.state_dict()[k]) for k, v in ref.items())


def test_lora_targets_prefers_q_v():
    m = torch.nn.Module()
    m.q_proj, m.k_proj, m.v_proj = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert lora_targets(m) == ["q_proj", "v_proj"]
    assert lora_targets(torch.nn.Sequential(torch.nn.Linear(2, 2))) == ["0"]
    mllm = torch.nn.Module()
    mllm.vision, mllm.language_model = torch.nn.Module(), torch.nn.Module()
    for part in (mllm.vision, mllm.language_model):
        part.q_proj, part.o_proj = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert lora_targets(mllm) == ["language_model.q_proj"]


class CountingWorld:
    """A one-process world that counts how often it is joined and left."""

    def __init__(self, counts):
        from tvprompt.training.distributed import World

        self.inner, self.counts = World(), counts
        counts["joined"] = counts.get("joined", 0) + 1

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def close(self):
        self.counts["closed"] = self.counts.get("closed", 0) + 1


def test_an_analysis_joins_the_processes_once_for_all_its_evaluations(tmp_path, base, monkeypatch):
    from tvprompt.evaluation import analyses, evaluate

    counts = {}
    monkeypatch.setattr(analyses, "init_world", lambda: CountingWorld(counts))

    def own_world():
        raise AssertionError("an evaluation joined its own process group")

    monkeypatch.setattr(evaluate, "init_world", own_world)
    trainer, calls = FakeTrainer(), {}
    doc = corruption(TARGETS, setup_(), tmp_path, base=base, trainer=trainer, backends=toy_backends(calls),
                     reduced=True)
    assert len(trainer.recipes) == 1 and len(doc["grid"]) == 2  # one training, two evaluations
    assert counts == {"joined": 1, "closed": 1}


def test_the_project_trainer_is_bound_to_the_analysis_world():
    import functools

    from tvprompt.evaluation.analyses import _in_world, train_prompt
    from tvprompt.training.distributed import World

    w = World()
    assert _in_world(train_prompt, w).keywords == {"world": w}
    bound = _in_world(functools.partial(train_prompt, runtime={"device": "cpu"}), w)
    assert bound.func is train_prompt and bound.keywords == {"runtime": {"device": "cpu"}, "world": w}
    other = FakeTrainer()
    assert _in_world(other, w) is other


def test_only_the_main_process_writes_an_analysis(tmp_path):
    from tvprompt.evaluation.analyses import write_analysis
    from tvprompt.training.distributed import World

    def plot(path):
        raise AssertionError("a second process drew the plot")

    doc = write_analysis(tmp_path, "width", {"title": "t"}, ["a"], [[1]], plot, world=World(rank=1, size=2))
    assert doc["analysis"] == "width" and list(tmp_path.iterdir()) == []
