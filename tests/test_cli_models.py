"""`tvp models`: the family table, --check on a local checkpoint, and docs/models.md in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvprompt.models.catalog import markdown_table
from tvprompt.models.registry import list_families

ROOT = Path(__file__).resolve().parents[1]


def _tvp(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tvprompt", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_models_json_lists_every_family_and_guide():
    result = _tvp("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for family in list_families():
        row = rows[family]
        assert row["kind"] == "mllm" and row["source"] and row["target"]
        assert row["features"] == ["encoder", "projected"] and row["model_types"]
    assert rows["clip"]["guide"] and rows["siglip"]["guide"]
    assert rows["open_clip"]["extra"] == "open_clip"


def test_models_table_is_printed():
    result = _tvp("models")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:3] == ["NAME", "MODEL_TYPE", "SOURCE"]
    assert "llava_next" in result.stdout and "open_clip" in result.stdout


def test_docs_carry_the_current_table():
    docs = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert markdown_table() in docs, "docs/models.md is stale: paste the output of `tvp models --markdown`"


def test_check_loads_a_local_directory(tmp_path):
    from tvprompt.models.tiny import build_tiny_model

    directory = build_tiny_model("llava", tmp_path / "tiny llava")
    result = _tvp("models", "--check", f"hf:{directory}", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "llava" and info["class"] == "LlavaForConditionalGeneration"
    assert info["input_size"] == [32, 32] and info["dtype"] == "float32"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--check", "no-such-model-or-dir"], 2, "hf:<hub id or local dir>"),
    (["--guide"], 2, "--check"),
])
def test_usage_errors(args, code, message):
    result = _tvp("models", *args)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_check_on_a_folder_without_config(tmp_path):
    result = _tvp("models", "--check", f"hf:{tmp_path}")
    assert result.returncode == 1
    assert "no config.json" in result.stderr
