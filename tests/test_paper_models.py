"""The paper's own MLLMs as registry families: listing, VisualGLM's guard and sequence layout, and the
Table-1 protocol (train on one model, evaluate on the others) over tiny stand-ins of all six."""

from __future__ import annotations

import json

import pytest
import torch

from tvprompt.cli import main
from tvprompt.errors import UsageError
from tvprompt.models.paper.visualglm import OPT_IN, answer_logprobs, build_sequences
from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model, build_tokenizer
from tvprompt.prompt import VisualPrompt

PAPER = ["minigpt4", "vpgtrans", "bliva", "visualglm"]


def test_tvp_models_lists_the_paper_families_and_says_which_are_untested(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(PAPER) <= set(rows)
    assert rows["visualglm"]["untested"] and rows["visualglm"]["notes"].startswith("UNTESTED here")
    assert OPT_IN in rows["visualglm"]["notes"]
    for family in ("minigpt4", "vpgtrans", "bliva"):
        assert rows[family]["untested"] is None
        assert rows[family]["source"] and rows[family]["target"]
        assert rows[family]["features"] == ["encoder", "projected"]
        assert rows[family]["model_types"] == [family]
    assert main(["models"]) == 0
    visualglm = [line for line in capsys.readouterr().out.splitlines() if line.startswith("visualglm")]
    assert len(visualglm) == 1 and "UNTESTED" in visualglm[0]


def test_visualglm_refuses_remote_code_without_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv(OPT_IN, raising=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chatglm", "image_length": 32}))
    with pytest.raises(UsageError, match=f"{OPT_IN}=1"):
        load_adapter(f"hf:{tmp_path}", device="cpu")


class _GLMTokenizer:
    """ChatGLM-6B's special-token rule (``ids + [gMASK, <sop>]``) over a real tiny BPE tokenizer."""

    def __init__(self) -> None:
        self.tok = build_tokenizer({"mask": "[gMASK]", "sop": "<sop>"})
        self.gmask, self.sop = self.tok.convert_tokens_to_ids(["[gMASK]", "<sop>"])
        self.unk_token_id, self.pad_token_id, self.eos_token_id = (self.tok.unk_token_id, self.tok.pad_token_id,
                                                                   self.tok.eos_token_id)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def build_inputs_with_special_tokens(self, ids: list[int]) -> list[int]:
        return ids + [self.gmask, self.sop]


def test_visualglm_sequences_batch_any_size_and_score_only_answer_and_eos():
    tok = _GLMTokenizer()
    batch = build_sequences(tok, ["What shape is this?", "Is there a red circle?"], ["circle", "no"], image_length=4)
    head = len(tok.encode("<img>"))
    assert batch.pre_image == head
    assert (batch.input_ids[:, head : head + 4] == tok.unk_token_id).all()  # same slot offset in every row
    for row, target, answer in zip(batch.input_ids, batch.target, ["circle", "no"], strict=True):
        sop = row.tolist().index(tok.sop)
        assert row[sop - 1] == tok.gmask
        scored = row[target].tolist()
        assert scored == tok.encode(answer) + [tok.eos_token_id]  # not <sop>, not padding
        assert target.nonzero().min() == sop + 1
    assert batch.input_ids[1, -1] == tok.pad_token_id or batch.input_ids[0, -1] == tok.pad_token_id
    logits = torch.zeros(*batch.input_ids.shape, 600)
    total, count = answer_logprobs(logits, batch)
    torch.testing.assert_close(total / count, torch.full((2,), -torch.log(torch.tensor(600.0))))
    assert count.tolist() == [len(tok.encode(a)) + 1 for a in ["circle", "no"]]


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Tiny stand-ins of the paper's six models (VisualGLM -> untested; its slot goes to a second BLIP-2)."""
    torch.set_num_threads(1)
    families = {"minigpt4": "minigpt4", "instructblip": "instructblip", "blip2-t5": "blip2", "vpgtrans": "vpgtrans",
                "bliva": "bliva"}
    overrides = {"blip2-t5": {"llm": "t5"}}
    out = {}
    for name, family in families.items():
        d = build_tiny_model(family, tmp_path_factory.mktemp(name) / "m", seed=1, **overrides.get(name, {}))
        out[name] = load_adapter(f"hf:{d}", device="cpu")
    return out


def test_table1_protocol_train_on_one_evaluate_on_all(six):
    """Train a border on MiniGPT-4 (with FCA features from the same forward), then score on every model."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 48, 48, generator=g)
    prompts, answers, choices = ["What shape is this?"] * 2, ["circle", "square"], ["circle", "square", "star"]
    source = six["minigpt4"]
    prompt = VisualPrompt(image_height=64, image_width=64, prompt_width=8)
    opt = torch.optim.Adam(prompt.parameters(), lr=0.05)
    clean = prompt.apply(images).detach()
    with torch.no_grad():
        ref = source.vision_features(clean, "encoder")
        start = source.lm_loss(clean, prompts, answers).item()
    for _ in range(15):
        opt.zero_grad()
        loss, feats = source.lm_loss_with_features(prompt.apply(images), prompts, answers, kind="encoder")
        (loss + 0.005 * 0.5 * (feats - ref).pow(2).sum(-1).mean()).backward()
        opt.step()
        prompt.project_()
    prompted = prompt.apply(images).detach()
    with torch.no_grad():
        assert source.lm_loss(prompted, prompts, answers).item() < start
        for name, target in six.items():  # the same 64x64 prompted pixels go to every model
            scores = target.score_choices(prompted, prompts, choices)
            assert scores.shape == (2, 3) and torch.isfinite(scores).all(), name
            assert (scores <= 0).all(), name


def test_minigpt4_released_template_for_training_and_ranking(six):
    """``use_template("released")``: BOS <Img>[image]</Img> + instruction (tokenised apart), trained on
    answer + ###, choices ranked by the mean log-probability of the class tokens alone (no ###)."""
    from tvprompt.errors import UsageError

    model = six["minigpt4"]
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    prompt, choices = "This is a photo of a", ["circle", "red square", "star"]
    chat = model.score_choices(images, [prompt] * 2, choices)
    model.use_template("released")
    try:
        image = [model.image_token_id] * model.num_image_tokens()
        assert model.prompt_ids(prompt) == (model.bos() + model.text_ids("<Img>") + image + model.text_ids("</Img>")
                                            + model.text_ids(prompt))
        assert model.answer_ids("circle") == model.text_ids("circle###")  # training target keeps ###
        released = model.score_choices(images, [prompt] * 2, choices)
        assert not torch.allclose(released, chat)
        model.answer_ids = model.text_ids  # lm_loss over the bare class tokens = minus the released score
        model._token_cache.clear()
        for b in range(2):
            for c, choice in enumerate(choices):
                want = -model.lm_loss(images[b : b + 1], [prompt], [choice]).item()
                assert released[b, c].item() == pytest.approx(want, abs=1e-4)
        with pytest.raises(UsageError, match="template"):
            model.use_template("vicuna")
    finally:
        del model.answer_ids
        model.use_template("chat")
    torch.testing.assert_close(model.score_choices(images, [prompt] * 2, choices), chat)
