"""TaskSpec: YAML loading, templates, choices, and `tvp tasks`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvprompt.data import Sample
from tvprompt.errors import TvpError
from tvprompt.tasks import TaskSpec, list_tasks, load_task, refine_name

from ._data_fixtures import write_pope

SRC = str(Path(__file__).resolve().parents[1] / "src")
PAPER_TASKS = ["cifar10", "cifar100", "svhn", "imagenette", "clevr_count", "hateful_memes", "pope_random",
               "pope_popular", "pope_adversarial", "oxford_pets", "fgvc_aircraft", "food101"]  # fmt: skip


def test_paper_tasks_are_built_in():
    assert set(PAPER_TASKS) <= set(list_tasks())


@pytest.mark.parametrize("name", list_tasks())
def test_every_builtin_loads_and_renders(name):
    spec = load_task(name)
    assert spec.name == name and spec.version == 1
    sample = Sample(id="x", image=None, answer=(spec.choices or ["a"])[0], question="Is there a cat?", text="hi")
    assert spec.prompt_for(sample)
    assert spec.answer_for(sample) == spec.choices[0]
    assert spec.label_index(sample) == 0
    if spec.classes is not None:
        assert len(spec.classes) == len(spec.choices)


def test_builtin_class_counts_and_released_templates():
    counts = {"cifar10": 10, "cifar100": 100, "svhn": 10, "imagenette": 10, "oxford_pets": 37,
              "fgvc_aircraft": 100, "food101": 101, "clevr_count": 11, "hateful_memes": 2}  # fmt: skip
    for name, n in counts.items():
        assert len(load_task(name).choices) == n, name
    s = Sample(id="1", image=None, answer="cat", text="love you")
    cifar = load_task("cifar10")
    assert cifar.prompt_for(s) == "This is a photo of a"
    assert cifar.answer_for(s) == "cat" and cifar.label_index(s) == 3
    assert cifar.tse_text_for(s) == "a photo of a cat."
    assert cifar.tse_texts()[:2] == ["a photo of a airplane.", "a photo of a automobile."]
    assert load_task("clevr_count").prompt_for(s) == (
        "How many objects are there in this image? Answer with a single number."
    )
    assert load_task("hateful_memes").prompt_for(s) == 'This is an image with: "love you" written on it. Is it hateful?'
    assert load_task("fgvc_aircraft").choices[1] == "727-200"  # refinement off for variant names
    assert load_task("oxford_pets").choices[9] == "british shorthair"


@pytest.mark.parametrize("name", list_tasks())
def test_every_builtin_gives_tse_texts(name):
    """TVP runs with TSE on every built-in task (the trainer refuses TSE without texts, never drops it)."""
    spec = load_task(name)
    for answer in spec.choices or ["a"]:
        text = spec.tse_text_for(Sample(id="x", image=None, answer=answer, question="Is there a cat in the image?",
                                        text="love you"))
        assert text and "{" not in text, (name, text)


def test_tse_texts_of_yes_no_tasks_name_the_answer():
    meme = load_task("hateful_memes")
    yes = Sample(id="1", image=None, answer="yes", text="love you")
    assert meme.tse_text_for(yes) == 'a hateful meme with "love you" written on it.'
    assert meme.tse_texts() is None  # the text depends on the meme: one per sample, no choice table
    pope = load_task("pope_random")
    q = "Is there a dog in the image?"
    assert pope.tse_text_for(Sample(id="1", image=None, answer="no", question=q)) == f"{q} No, there is not."
    assert pope.tse_text_for(Sample(id="2", image=None, answer="yes", question=q)) == f"{q} Yes, there is."


def test_tse_answers_with_unquoted_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("version: 1\nname: t\nkind: yes_no\nformat: manifest\ntse_text: 'a {answer} one'\n"
                    "tse_answers: {yes: good, no: bad}\n")
    with pytest.raises(TvpError, match="quote yes/no"):
        TaskSpec.from_yaml(path)


def test_refine_name():
    assert refine_name("British_Shorthair") == "british shorthair"
    assert refine_name("  pickup-truck ") == "pickup truck"


def _write(tmp_path, data) -> Path:
    import yaml

    p = tmp_path / "task.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_user_yaml_with_family_override(tmp_path):
    path = _write(tmp_path, {
        "version": 1, "name": "colors", "kind": "classification",
        "instruction": "What color is it? Options: {choices}.",
        "instruction_by_family": {"qwen2_vl": "Color? {choices}"},
        "answer": "It is {answer}.", "choices": ["Red_Wine", "sky-blue"],
        "tse_text": "a {answer} thing",
    })  # fmt: skip
    spec = load_task(path)
    assert spec.choices == ["red wine", "sky blue"]
    s = Sample(id="a", image=None, answer="sky_blue")
    assert spec.prompt_for(s) == "What color is it? Options: red wine, sky blue."
    assert spec.prompt_for(s, family="qwen2_vl") == "Color? red wine, sky blue"
    assert spec.prompt_for(s, family="llava") == "What color is it? Options: red wine, sky blue."
    assert spec.label_index(s) == 1
    assert spec.answer_for(s) == "It is sky blue."
    assert spec.choice_texts_for(s) == ["It is red wine.", "It is sky blue."]
    assert spec.tse_text_for(s) == "a sky blue thing"
    assert spec.metrics == ["top1", "top5"]


def test_per_sample_choices_win():
    spec = load_task("pope_random")
    s = Sample(id="q", image=None, answer="no", question="Is there a dog?", choices=["no", "yes"], label=0)
    assert spec.choices_for(s) == ["no", "yes"] and spec.label_index(s) == 0
    assert spec.prompt_for(s) == "Is there a dog?"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "t"}, "missing field 'version'"),
        ({"version": 1, "name": "t", "kind": "regression"}, "kind 'regression' is not one of"),
        ({"version": 1, "name": "t", "instruction": "{caption}"}, "unknown placeholder"),
        ({"version": 1, "name": "t", "metrics": ["bleu"]}, "unknown metric"),
        ({"version": 1, "name": "t", "metrics": ["auc"]}, "need kind yes_no or binary_auc"),
        ({"version": 1, "name": "t", "kind": "yes_no", "positive": "maybe"}, "positive 'maybe' is not among"),
        ({"version": 1, "name": "t", "choices": ["a_b", "a-b"]}, "choices repeat"),
        ({"version": 9, "name": "t"}, "newer than supported"),
        ({"version": 1, "name": "t", "splits": {"dev": "x"}}, "unknown key"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(TvpError, match=message) as e:
        load_task(path)
    assert str(path) in str(e.value)


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nname: [unclosed\n")
    with pytest.raises(TvpError, match=r"bad.yaml:\d+: not valid YAML"):
        load_task(p)


def test_unknown_task_suggests():
    with pytest.raises(TvpError, match="did you mean cifar10"):
        load_task("cifar1O")
    with pytest.raises(TvpError, match="not found"):
        load_task("nowhere/task.yaml")


def test_to_dict_round_trip():
    spec = load_task("hateful_memes")
    again = TaskSpec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()


def _tvp(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "tvprompt", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_cli_tasks_lists_builtins():
    r = _tvp("tasks")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["TASK", "KIND", "CHOICES", "METRICS"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == set(list_tasks())
    assert rows["cifar100"][1:4] == ["classification", "100", "top1,top5"]
    assert rows["hateful_memes"][1:4] == ["binary_auc", "2", "auc,accuracy"]


def _main(capsys, *args: str) -> tuple[int, str, str]:
    from tvprompt.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_tasks_json_show_and_errors(capsys):
    code, out, _ = _main(capsys, "tasks", "--json")
    assert code == 0 and {t["name"] for t in json.loads(out)} == set(list_tasks())
    code, out, _ = _main(capsys, "tasks", "pope_adversarial")
    assert code == 0 and "yes_no" in out and "{question}" in out
    code, out, _ = _main(capsys, "tasks", "hateful_memes", "--json")
    assert code == 0 and json.loads(out)["positive"] == "yes"
    code, _, err = _main(capsys, "tasks", "nope")
    assert code == 1 and "unknown task 'nope'" in err


def test_cli_tasks_data_shows_splits(tmp_path, capsys):
    write_pope(tmp_path, "random", n=8)
    code, out, err = _main(capsys, "tasks", "pope_random", "--data", str(tmp_path))
    assert code == 0, err
    lines = dict(ln.split(None, 1) for ln in out.splitlines())
    assert lines["data"].endswith("(pope)")
    assert lines["train"].startswith("3 samples") and lines["val"].startswith("1 samples")
    assert lines["test"].startswith("4 samples, 2 distinct answers")
    code, _, err = _main(capsys, "tasks", "--data", str(tmp_path))
    assert code == 2 and "--data needs a TASK" in err
    code, out, _ = _main(capsys, "tasks", "pope_popular", "--data", str(tmp_path))
    assert code == 1 and "no coco_pope_popular.json" in out
