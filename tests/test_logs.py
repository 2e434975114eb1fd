"""Logs people can follow: tvprompt's own logger, step and validation lines without a terminal,
--json summaries, integer counts."""

import json
import logging

import torch

from tvprompt.evaluation.evaluate import EvalSetup, evaluate
from tvprompt.training.loop import resolve_config, train

from .eval_toys import make_prompt, toy_backends
from .toy import ToyAdapter, ToyDataset, ToySpec, toy_batches

torch.set_num_threads(1)


def test_verbose_shows_tvprompt_debug_but_not_other_libraries(tmp_path, tvp):
    from PIL import Image

    from tvprompt import VisualPrompt

    pdir = VisualPrompt(image_height=32, image_width=32, prompt_width=4).save_pretrained(tmp_path / "p")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a.png")
    r = tvp("-v", "apply", "--prompt", pdir, tmp_path / "a.png", "--output", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    foreign = [line for line in r.stderr.splitlines() if line.startswith("DEBUG") and " tvprompt" not in line]
    assert not foreign, foreign  # PIL logs "STREAM b'IHDR'" at DEBUG when the root logger lets it


def test_setup_logging_levels():
    from tvprompt.cli import setup_logging

    root, ours = logging.getLogger(), logging.getLogger("tvprompt")
    before = root.level, ours.level
    try:
        setup_logging(verbose=True)
        assert logging.getLogger("tvprompt.training.loop").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        setup_logging(verbose=False)
        assert not logging.getLogger("tvprompt.training.loop").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("tvprompt.training.loop").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(before[0])
        ours.setLevel(before[1])


def _toy_train(tmp_path, **flags):
    base = {"sources": ["toy"], "task": "toy", "data": "toy", "steps": 4, "batch_size": 4, "image_size": 16,
            "width": 3, "val_split": "val", "val_every": 2, "seed": 5, "lr": 30.0, "output": str(tmp_path)}
    cfg = resolve_config("evp", flags={**base, **flags})
    return train(cfg, sources=[ToyAdapter(0)], spec=ToySpec(), train_set=ToyDataset(8),
                 val_set=ToyDataset(9, seed=1), batch_fn=toy_batches)


def test_without_a_terminal_each_step_and_validation_is_a_log_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tvprompt")
    _toy_train(tmp_path)  # stderr under pytest is not a terminal: no bar, log lines
    lines = [r.getMessage() for r in caplog.records if r.name == "tvprompt.training.loop"]
    steps = [m for m in lines if m.startswith("step ")]
    assert [m.split()[1] for m in steps] == ["1/4", "2/4", "3/4", "4/4"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps[0].startswith(f"step 1/4 loss {rows[1]['loss']:.4g}")  # rows[0]: the step-0 validation
    vals = [m for m in lines if m.startswith("validation at step")]
    expected = [f"validation at step {r['step']}: accuracy {r['accuracy']:.4f} on 9 samples"
                for r in rows if r.get("split") == "val"]
    assert vals == expected and len(vals) == 3


def test_train_json_summary(tmp_path):
    from tvprompt.cli import build_parser
    from tvprompt.cli.train import train_summary

    result = _toy_train(tmp_path, progress=False)
    summary = json.loads(json.dumps(train_summary(result)))
    assert summary["prompt"] == str(tmp_path / "prompt") and summary["steps"] == 4
    assert summary["best_step"] == result.best_step and summary["best_val_accuracy"] == result.best_metric
    assert build_parser().parse_args(["train", "--json"]).json is True


def test_eval_json_summary_and_integer_counts(tmp_path):
    from tvprompt.cli.evaluate import eval_summary

    prompts = [make_prompt(tmp_path / "red", 0.95, channel=0, sources=["toy:a"])]
    setup = EvalSetup(task="toy", data="unused", batch_size=4)
    results = evaluate(prompts, ["toy:a", "toy:b"], setup, tmp_path / "out", backends=toy_backends({}))
    summary = json.loads(json.dumps(eval_summary(results, str(tmp_path / "out"))))
    metric = results["primary_metric"]
    assert summary["metric"] == metric and summary["models"] == ["toy:a", "toy:b"]
    assert summary["prompted"]["tvp@a"]["toy:b"] == results["transfer"]["tvp@a"]["toy:b"]["prompted"][metric]
    assert summary["clean"]["toy:a"] == results["clean"]["toy:a"][metric]
    assert all(isinstance(n, int) and n > 0 for n in summary["samples"].values())


def test_sample_counts_are_integers_in_metrics_and_log_lines():
    from tvprompt.evaluation.evaluate import _fmt_metrics
    from tvprompt.evaluation.metrics import compute_metrics

    metrics = compute_metrics("cifar10", [{"label": 0, "pred": 0}, {"label": 1, "pred": 0}, {"label": 2, "pred": 2}])
    assert metrics["n"] == 3 and isinstance(metrics["n"], int)
    assert _fmt_metrics(metrics).startswith("n=3, ") and "top1=0.6667" in _fmt_metrics(metrics)


def test_transformers_weight_bars_are_off_while_a_model_loads(tmp_path, monkeypatch):
    from transformers.utils import logging as hf_logging

    from tvprompt.models import registry

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    cls = registry.get_family("llava")
    seen = []
    monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda c, source, **kw: seen.append(
        hf_logging.is_progress_bar_enabled()) or "adapter"))
    hf_logging.enable_progress_bar()
    assert registry.load_adapter(str(tmp_path)) == "adapter"
    assert seen == [False] and hf_logging.is_progress_bar_enabled()  # off during the load, restored after

