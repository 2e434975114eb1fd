"""One flag name per meaning across commands; old names still work, with a warning."""

from __future__ import annotations

import logging

from tvprompt.cli import build_parser
from tvprompt.cli.train import flag_values


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_demo_uses_n_and_limit_and_keeps_the_old_names(caplog):
    args = parse("demo", "--n", "40", "--limit", "12")
    assert (args.n_images, args.eval_limit) == (40, 12)
    with caplog.at_level(logging.WARNING, logger="tvprompt.cli"):
        old = parse("demo", "--n-images", "30", "--eval-limit", "8")
    assert (old.n_images, old.eval_limit) == (30, 8)
    assert "--n-images is deprecated; use --n" in caplog.text
    assert "--eval-limit is deprecated; use --limit" in caplog.text
    help_text = build_parser()._subparsers._group_actions[0].choices["demo"].format_help()
    assert "--n-images" not in help_text and "--limit" in help_text


def test_no_progress_on_every_long_command():
    common = ["--model", "zoo:x", "--task", "t", "--data", "d", "--output", "o"]
    assert parse("eval", *common, "--no-progress").progress is False
    assert parse("eval", *common).progress is True
    assert parse("analyze", "ablation", *common, "--source", "zoo:x", "--no-progress").progress is False
    assert parse("demo", "--no-progress").progress is False
    assert flag_values(parse("train", "--no-progress"))["progress"] is False


def test_train_has_overwrite():
    assert flag_values(parse("train", "--overwrite"))["overwrite"] is True
    assert "overwrite" not in flag_values(parse("train"))


def test_corruption_strength_flag_reaches_the_evaluation(monkeypatch):
    import pytest

    from tvprompt.evaluation import evaluate as ev

    seen = {}

    class Stop(Exception):
        pass

    def fake(prompts, models, setup, output, **kw):
        seen["setup"] = setup
        raise Stop

    monkeypatch.setattr(ev, "evaluate", fake)
    common = ("eval", "--model", "zoo:x", "--task", "t", "--data", "d", "--output", "o", "--corruption", "fog")
    for argv, want in ((common, "cifar10c"), ((*common, "--corruption-strength", "imagenetc"), "imagenetc")):
        args = parse(*argv)
        with pytest.raises(Stop):
            args.func(args)
        assert (seen["setup"].corruption, seen["setup"].corruption_strength) == ("fog", want)
    analyze = parse("analyze", "corruption", "--model", "m", "--task", "t", "--data", "d", "--output", "o",
                    "--corruption-strength", "imagenetc")
    assert analyze.corruption_strength == "imagenetc"
    with pytest.raises(SystemExit):
        parse(*common, "--corruption-strength", "imagenet")
