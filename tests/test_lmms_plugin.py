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
    assert m.model_id == "tvprompt"
    assert m.simple_class_path.endswith(".PromptedLMM") and m.chat_class_path.endswith(".PromptedChatLMM")
    from tvprompt.integrations.lmms_model import PromptedChatLMM, PromptedLMM

    assert PromptedLMM.is_simple and not PromptedChatLMM.is_simple  # what lmms-eval's registry checks


@pytest.mark.parametrize("args", [{"prompt": "p"}, {"base": "llava_hf"}, {"base": "tvprompt", "prompt": "p"}])
def test_model_args_are_checked_before_loading(args):
    pytest.importorskip("lmms_eval")
    from tvprompt.errors import UsageError
    from tvprompt.integrations.lmms_model import PromptedLMM

    with pytest.raises(UsageError, match="--model tvprompt"):
        PromptedLMM(**args)


def _image(seed: int, h: int = 20, w: int = 24) -> Image.Image:
    return tensor_to_pil(torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)))


def _prompted(tmp_path, image: Image.Image) -> Image.Image:
    prompt = VisualPrompt.from_pretrained(tmp_path / "p")
    return tensor_to_pil(prompt.apply(pil_to_tensor(image)[None]).detach()[0])


def test_chat_requests_get_prompted_image_items_and_originals_stay(paster, tmp_path):
    image = _image(1)
    static = [{"role": "system", "content": "be brief"},
              {"role": "user", "content": [{"type": "image", "url": image}, {"type": "video", "url": "clip.mp4"},
                                           {"type": "text", "text": "What is it?"}]}]

    def doc_to_messages(doc, **kwargs):
        return static

    req = Instance("generate_until", ("ctx", doc_to_messages, {"max_new_tokens": 4}, 7, "task", "test"))
    (out,) = prompt_requests([req], paster, chat=True)
    assert req.arguments[1] is doc_to_messages and out.arguments[2:] == req.arguments[2:]
    system, user = out.arguments[1]({"id": 7})
    assert system == static[0]
    pasted, video, text = user["content"]
    assert isinstance(pasted["url"], Image.Image) and pasted["url"].size == (32, 32) and pasted["type"] == "image"
    assert torch.equal(pil_to_tensor(pasted["url"]), pil_to_tensor(_prompted(tmp_path, image)))
    assert video == {"type": "video", "url": "clip.mp4"} and text == {"type": "text", "text": "What is it?"}
    assert static[1]["content"][0]["url"] is image  # the task's own messages are not modified


def test_chat_multi_round_tuples_are_prompted_and_terminal_rounds_pass(paster, tmp_path):
    image = _image(2)

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        if round_idx == 2:
            return (None, True, previous_output, previous_round_info)
        return ([{"role": "user", "content": [{"type": "image", "url": image}]}], False, previous_output, {"r": 1})

    (req,) = prompt_requests([Instance("generate_until_multi_round",
                                       ("ctx", doc_to_messages, {}, 0, "task", "test"))], paster, chat=True)
    messages, terminal, prev, info = req.arguments[1]({}, round_idx=1, previous_output="a")
    assert (terminal, prev, info) == (False, "a", {"r": 1})
    assert torch.equal(pil_to_tensor(messages[0]["content"][0]["url"]), pil_to_tensor(_prompted(tmp_path, image)))
    assert req.arguments[1]({}, round_idx=2, previous_output="b") == (None, True, "b", None)


def test_requests_without_a_visual_callable_pass_unchanged(paster):
    # acc_mutual_info's unconditional requests carry no visual; a simple request seen as chat has none at 1
    unconditional = Instance("loglikelihood", ("", " red"))
    simple = Instance("generate_until", ("ctx", {}, lambda doc: [], 0, "task", "test"))
    assert prompt_requests([unconditional], paster)[0] is unconditional
    assert prompt_requests([simple], paster, chat=True)[0] is simple
    assert prompt_requests([simple], paster)[0] is not simple


def test_random_patch_placement_depends_on_the_image_not_the_call_order(tmp_path):
    prompt = VisualPrompt(shape="random_patch", image_height=32, image_width=32, patch_size=6, seed=5)
    with torch.no_grad():
        prompt.delta.fill_(1.0)
    paster = PromptPaster(prompt.save_pretrained(tmp_path / "rp"))
    docs = [{"image": Image.new("RGB", (32, 32), (d, d, d))} for d in range(6)]  # six dark, distinct images

    def doc_to_visual(doc):
        return [doc["image"]]

    def patch_corner(req):
        (im,) = req.arguments[2](docs[req.arguments[3]])
        x = pil_to_tensor(im)[0]
        rows, cols = torch.nonzero(x > 0.5, as_tuple=True)
        assert len(rows) == 36  # one 6×6 white patch on a dark image
        return int(rows.min()), int(cols.min())

    reqs = [Instance("generate_until", ("ctx", {}, doc_to_visual, d, "task", "test")) for d in range(6)]
    first = [patch_corner(r) for r in prompt_requests(reqs, paster)]
    again = [patch_corner(r) for r in reversed(prompt_requests(reqs, paster))][::-1]
    assert first == again  # same image, same patch, whatever the order or the number of calls
    assert len(set(first)) > 1  # and the placement does vary across images
    # a border prompt draws nothing: no generator, no hashing of the pixels
    assert PromptPaster(make_prompt(tmp_path / "b", 0.5, width=4, size=32)).generator(torch.zeros(3, 4, 4)) is None
