"""The lmms-eval plugin's request rewriting (lmms-eval itself is not needed for these parts)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image

from tvprompt.imageio import pil_to_tensor, tensor_to_pil
from tvprompt.integrations.lmms import PromptPaster, prompt_requests
from tvprompt.prompt import VisualPrompt

from .eval_toys import make_prompt


@dataclass
class Instance:  # the fields lmms-eval's Instance has that the plugin touches
    request_type: str
    arguments: tuple
    resps: list = field(default_factory=list)


@pytest.fixture
def paster(tmp_path):
    return PromptPaster(make_prompt(tmp_path / "p", 0.9, width=4, size=32, channel=1))


def test_requests_get_prompted_images_and_originals_stay(paster, tmp_path):
    g = torch.Generator().manual_seed(0)
    images = {i: tensor_to_pil(torch.rand(3, 20 + i, 24, generator=g)) for i in range(3)}
    path = tmp_path / "img.png"
    images[2].save(path)
    docs = {0: {"image": images[0]}, 1: {"image": images[1]}, 2: {"image": str(path)}}

    def doc_to_visual(doc):
        return [doc["image"]]

    reqs = [Instance("loglikelihood", ("ctx", "target", doc_to_visual, 0, "task", "test")),
            Instance("generate_until", ("ctx", {"until": ["\n"]}, doc_to_visual, 1, "task", "test")),
            Instance("generate_until", ("ctx", {}, doc_to_visual, 2, "task", "test"))]
    out = prompt_requests(reqs, paster)
    assert all(r.arguments[2] is doc_to_visual for r in reqs)  # the caller's requests are untouched
    prompt = VisualPrompt.from_pretrained(tmp_path / "p")
    for i, r in enumerate(out):
        assert r.arguments[:2] == reqs[i].arguments[:2] and r.arguments[3:] == reqs[i].arguments[3:]
        (visual,) = r.arguments[2](docs[r.arguments[3]])
        assert isinstance(visual, Image.Image) and visual.size == (32, 32)
        src = pil_to_tensor(images[i])
        expected = tensor_to_pil(prompt.apply(src[None]).detach()[0])
        assert torch.equal(pil_to_tensor(visual), pil_to_tensor(expected))
        # the border holds the prompt: green channel at 0.9
        assert abs(pil_to_tensor(visual)[1, 0, 0].item() - 0.9) < 1 / 255


def test_non_image_visuals_pass_through(paster):
    video = {"path": "clip.mp4"}
    assert paster([video, "not-a-file.mp4"]) == [video, "not-a-file.mp4"]


def test_manifest_needs_lmms_eval():
    pytest.importorskip("lmms_eval")
    from tvprompt.integrations.lmms import manifest

    m = manifest()
    assert m.model_id == "tvprompt" and m.simple_class_path.endswith("PromptedLMM")
