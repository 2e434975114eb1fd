"""`tvp serve --demo`: the hosted models it picks, and demo prompts built once, deterministically, then cached."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tvprompt.cli import build_parser  # noqa: E402
from tvprompt.cli.serve import _front_settings  # noqa: E402
from tvprompt.errors import TvpError, UsageError  # noqa: E402
from tvprompt.serve import Settings, create_app  # noqa: E402
from tvprompt.serve.demo import DEMO_PROMPTS, OWNER, demo_models  # noqa: E402

ZOO = demo_models()
needs_zoo = pytest.mark.skipif(not ZOO, reason="this checkout ships no model zoo")


@needs_zoo
def test_demo_hosts_the_zoo_models_unless_models_are_given():
    parse = build_parser().parse_args
    assert _front_settings(parse(["serve", "--demo"])) == {"hosted_models": ZOO, "model_device": None, "demo": True}
    assert "zoo:llava-p8" in ZOO and "zoo:clip-guide" not in ZOO  # MLLMs only
    args = parse(["serve", "--demo", "--model", "zoo:llava-p8", "--model-device", "cpu"])
    assert _front_settings(args) == {"hosted_models": ["zoo:llava-p8"], "model_device": "cpu", "demo": True}
    assert _front_settings(parse(["serve"])) == {"hosted_models": [], "model_device": None, "demo": False}


@pytest.mark.parametrize("bad", ["llava", "ftp:x", "zoo:no-such-model"])
def test_a_bad_model_id_fails_before_the_server_starts(bad):
    # checked while the settings are built, so `tvp serve` exits with this one line before uvicorn starts
    with pytest.raises(TvpError, match=bad.split(":")[-1]):
        _front_settings(build_parser().parse_args(["serve", "--model", bad]))


def test_demo_without_a_zoo_says_what_to_do(monkeypatch):
    import tvprompt.serve.demo as demo

    monkeypatch.setattr(demo, "demo_models", lambda: [])
    with pytest.raises(UsageError, match="tvp zoo build"):
        _front_settings(build_parser().parse_args(["serve", "--demo"]))


def _start(store) -> tuple[dict, float]:
    t0 = time.monotonic()
    app = create_app(Settings(store_dir=store, hosted_models=["zoo:llava-p8"], demo=True))
    with TestClient(app) as client:
        took = time.monotonic() - t0
        prompts = {p["name"]: client.get(f"/prompts/{p['id']}").json() for p in client.get("/prompts").json()}
    return prompts, took


@needs_zoo
@pytest.mark.slow
def test_demo_prompts_are_built_once_deterministically_and_cached(tmp_path, one_torch_thread):
    first, built_in = _start(tmp_path / "a")
    assert sorted(first) == sorted(p.name for p in DEMO_PROMPTS)
    for spec in DEMO_PROMPTS:
        p = first[spec.name]
        assert p["owner"] == OWNER and p["method"] == spec.method and p["task"] == f"shapeworld_{spec.task}"
        assert [s["model_id"] for s in p["sources"]] == ["zoo:llava-p8"]
        assert 0.0 <= p["metrics"]["val_accuracy"] <= 1.0
        transfer = p["metrics"]["transfer"]
        assert list(transfer) == ["zoo:llava-p8"] and transfer["zoo:llava-p8"]["source"] is True
        assert 0.0 <= transfer["zoo:llava-p8"]["prompted"] <= 1.0 and transfer["zoo:llava-p8"]["n"] > 0
        assert p["config"]["templates"]["example_question"].endswith("?")
        assert p["config"]["choices"]  # ask defaults to the task's choices
    again, restart_in = _start(tmp_path / "a")  # the cache: nothing rebuilt
    assert {n: p["id"] for n, p in again.items()} == {n: p["id"] for n, p in first.items()}
    assert restart_in < built_in
    other, _ = _start(tmp_path / "b")  # another store, same bytes
    for name, p in first.items():
        assert other[name]["files"]["prompt.safetensors"] == p["files"]["prompt.safetensors"]
