import dataclasses

import pytest

from tvprompt.cli import build_parser
from tvprompt.cli.train import flag_values
from tvprompt.errors import UsageError
from tvprompt.training.config import PRESETS, TrainConfig, load_config_file, resolve_config


def test_presets_match_the_paper_defaults():
    vp, evp, tvp = (resolve_config(m) for m in ("vp", "evp", "tvp"))
    assert (vp.update, vp.lr, vp.momentum, vp.fca, vp.tse, vp.flip) == ("sgd", 40.0, 0.9, 0.0, 0.0, False)
    assert (evp.update, evp.lr, evp.fca, evp.tse, evp.flip) == ("normalized", 70.0, 0.0, 0.0, True)
    assert (tvp.update, tvp.lr, tvp.batch_size, tvp.fca, tvp.tse) == ("normalized", 10.0, 16, 0.005, 0.001)
    assert all(c.lr_schedule == "cosine" and c.clamp and c.width == 30 and c.image_size == 224 for c in (vp, evp, tvp))
    assert set(PRESETS) == {"vp", "evp", "tvp"}


def test_preset_then_file_then_flags(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("method: evp\nbatch-size: 8\nlr: 50\nepochs: 2\nsource: hf:a\n")
    values = load_config_file(f)
    assert values == {"method": "evp", "batch_size": 8, "lr": 50, "epochs": 2, "sources": ["hf:a"]}
    cfg = resolve_config(None, values, {"lr": 5.0, "steps": 100, "tse": None})
    assert (cfg.method, cfg.batch_size, cfg.lr, cfg.steps, cfg.epochs) == ("evp", 8, 5.0, 100, None)
    assert cfg.flip and cfg.sources == ["hf:a"]  # from the evp preset / the file
    assert resolve_config("vp", values).update == "sgd"  # a --method flag beats the file's method


def test_config_file_errors(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("learning_rate: 3\n")
    with pytest.raises(UsageError, match=r"bad.yaml: unknown key 'learning_rate'; `tvp train --help`") as e:
        load_config_file(f)
    assert "val_max_samples" not in str(e.value)  # a pointer, not the list of every key
    f.write_text("val-max-sample: 8\n")
    with pytest.raises(UsageError, match=r"unknown key 'val-max-sample'; did you mean val_max_samples\b"):
        load_config_file(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_config_file(f)
    with pytest.raises(UsageError, match="no such config file"):
        load_config_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("kw, match", [
    ({"val_split": "test"}, "select on test data"),
    ({"steps": 10, "epochs": 1.0}, "either --steps or --epochs"),
    ({"fca_reference": "clean"}, "^--fca-reference: 'clean'"),
    ({"lr": -1.0}, "^--lr: must be"),
    ({"batch_size": 0}, "^--batch-size: must be"),
    ({"method": "sgd"}, "^--method: 'sgd'"),
    ({"num_workers": -1}, "^--num-workers: must be"),
    ({"width": 112}, r"^--width: 112 leaves no image inside a 224-pixel prompt"),
    ({"shape": "fixed_patch", "patch_size": 300}, "^--patch-size: 300 is larger than --image-size 224"),
    ({"train_split": "test"}, "^--train-split: training on the test split"),
    ({"sources": ["hf:a"], "source_devices": ["cpu", "cpu"]}, "^--source-device: 2 devices for 1 sources"),
])
def test_bad_values_are_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(**kw)


def test_yaml_numbers_as_users_write_them(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: 4e1\nmin-lr: 1e-3\nmomentum: 0.9\nfca: 5E-3\nsteps: 10\n")
    values = load_config_file(f)
    assert values["lr"] == 40.0 and values["min_lr"] == 0.001 and values["fca"] == 0.005
    cfg = resolve_config(None, values)
    assert (cfg.lr, cfg.min_lr, cfg.fca, cfg.steps) == (40.0, 0.001, 0.005, 10)
    f.write_text("lr: fast\n")
    with pytest.raises(UsageError, match="^--lr: must be a finite number >= 0, got 'fast'"):
        resolve_config(None, load_config_file(f))


def test_num_workers_defaults_to_the_device_choice():
    assert TrainConfig().num_workers is None  # resolved by the trainer: data.default_workers(device)
    assert TrainConfig(num_workers=3).num_workers == 3


def test_check_runnable_names_what_is_missing():
    with pytest.raises(UsageError, match="--source"):
        resolve_config("evp").check_runnable()
    cfg = resolve_config("tvp", flags={"sources": ["a"], "task": "t", "data": "d", "output": "o"})
    with pytest.raises(UsageError, match="needs --guide"):
        cfg.check_runnable()
    resolve_config("tvp",
                   flags={"sources": ["a"], "task": "t", "data": "d", "output": "o", "tse": 0.0}).check_runnable()


def test_cli_flags_map_to_config_fields():
    args = build_parser().parse_args([
        "train", "--method", "vp", "--source", "hf:a", "--source", "hf:b", "--task", "t", "--data", "d",
        "--output", "o", "--steps", "5", "--fca", "0.1", "--no-flip", "--no-clamp", "--val-split", "none",
    ])
    flags = flag_values(args)
    assert flags["sources"] == ["hf:a", "hf:b"] and flags["flip"] is False and flags["clamp"] is False
    assert "lr" not in flags and "resume" not in flags and "config" not in flags
    cfg = resolve_config(args.method, {}, flags)
    assert cfg.val_split is None and cfg.fca == 0.1 and cfg.lr == 40.0
    # several sources (and their devices) after one flag, as the README writes it
    args = build_parser().parse_args(["train", "--source", "hf:a", "hf:b", "--source-device", "cpu", "cpu",
                                      "--task", "t"])
    flags = flag_values(args)
    assert flags["sources"] == ["hf:a", "hf:b"] and flags["source_devices"] == ["cpu", "cpu"]


def test_cli_preset_released_and_its_named_options():
    args = build_parser().parse_args(["train", "--preset", "released", "--source", "hf:a", "--grad-norm-over", "border",
                                      "--tse-template", "a {answer}", "--image-resample", "bilinear"])
    cfg = resolve_config(args.method, {}, flag_values(args))
    assert cfg.preset == "released" and cfg.method == "tvp" and cfg.clamp is False and cfg.fca_distance == "l2"
    assert (cfg.grad_norm_over, cfg.tse_template, cfg.image_resample) == ("border", "a {answer}", "bilinear")
    cfg = resolve_config(None, {"preset": "released"}, {})  # from a config file
    assert cfg.lr_schedule == "cosine_epoch" and cfg.image_fit == "crop" and cfg.tse_scale_clamp == 100.0
    default = resolve_config("tvp")
    assert (default.fca_distance, default.grad_norm_over, default.image_fit, default.image_resample) == (
        "l2", "border", "crop", "bicubic")
    assert default.clamp and default.lr_schedule == "cosine" and default.preset is None
    with pytest.raises(UsageError, match="--grad-norm-over"):
        resolve_config("tvp", flags={"grad_norm_over": "frame", "shape": "fixed_patch"})


def test_cli_usage_errors_exit_2(tvp, tmp_path):
    r = tvp("train", "--method", "evp", "--source", "hf:x", "--task", "t", "--data", "d", "--output", tmp_path,
            "--val-split", "test")
    assert r.returncode == 2 and "select on test data" in r.stderr
    r = tvp("train", "--resume", "--output", tmp_path / "nothing")
    assert r.returncode == 1 and "no checkpoint to resume from" in r.stderr


def test_every_train_config_field_has_a_flag_and_every_flag_a_field():
    """CLI, YAML and Python share TrainConfig: `tvp train` may not grow or lose an option on its own."""
    import dataclasses

    from tvprompt.cli import build_parser
    from tvprompt.cli.train import _RENAMES
    from tvprompt.training.config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    cli_only = {"help", "config", "resume", "json"}
    dests = {_RENAMES.get(a.dest, a.dest) for a in train._actions if a.dest not in cli_only}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert dests == fields, (f"flags without a field: {sorted(dests - fields)}; "
                             f"fields without a flag: {sorted(fields - dests)}")


def test_from_preset_is_what_the_cli_runs():
    vp = TrainConfig.from_preset("vp", sources=["hf:a"], lr=30.0, val_split=None)
    assert (vp.method, vp.update, vp.lr, vp.fca, vp.tse, vp.flip) == ("vp", "sgd", 30.0, 0.0, 0.0, False)
    assert vp.sources == ["hf:a"] and vp.val_split is None  # None is a value here, not "not given"
    assert vp == dataclasses.replace(resolve_config("vp", flags={"sources": ["hf:a"], "lr": 30.0}), val_split=None)
    assert TrainConfig.from_preset("evp") == resolve_config("evp")
    released = TrainConfig.from_preset(preset="released", steps=5)
    assert released == resolve_config(None, flags={"preset": "released", "steps": 5})
    assert TrainConfig.from_preset("vp", **{"batch-size": 4}).batch_size == 4  # YAML spellings too
    with pytest.raises(UsageError, match="unknown key 'lrr'; did you mean lr"):
        TrainConfig.from_preset("vp", lrr=3)
    with pytest.raises(UsageError, match="--method 'sgd'"):
        TrainConfig.from_preset("sgd")


def test_train_refuses_a_vp_config_built_directly(tmp_path):
    from tvprompt import train
    from tvprompt.training.config import unapplied_preset

    direct = TrainConfig(method="vp", sources=["zoo:nothing"], output=str(tmp_path / "run"))
    assert unapplied_preset(direct) == ["update", "lr", "fca", "tse", "flip"]
    with pytest.raises(UsageError, match=r"TrainConfig\(method='vp'\) built directly keeps tvp's update='normalized', "
                                         r"lr=10.0.*TrainConfig.from_preset\('vp', ...\)"):
        train(direct)
    assert not (tmp_path / "run").exists()  # refused before anything was loaded or written
    assert unapplied_preset(TrainConfig(method="evp")) == ["lr", "fca", "tse"]
    assert unapplied_preset(TrainConfig()) == []  # tvp: the defaults are its preset
    assert unapplied_preset(TrainConfig(method="vp", update="sgd", lr=40.0, fca=0.0, tse=0.0, flip=False)) == []
    # chosen through the resolver, tvp's values on a vp run are the caller's choice
    chosen = resolve_config("vp", flags={"update": "normalized", "lr": 10.0, "fca": 0.005, "tse": 0.001, "flip": True})
    assert unapplied_preset(chosen) == [] and unapplied_preset(TrainConfig.from_preset("vp")) == []
