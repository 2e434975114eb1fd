"""Family-specific checks for Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM, PaliGemma and Gemma 3.

The contract tests in ``test_adapters.py`` run over these families too (gradients to the border
only, prompt optimisation, KV-cached scoring, features, processor parity on tiny checkpoints). Here:
- the adapter's loss equals the model's own forward fed the inputs its HF processor would build
  (so our prompt layout, ``mm_token_type_ids``, ``token_type_ids`` and positions are the model's),
  and dropping those fields changes the result (the known traps are real and avoided);
- M-RoPE positions equal ``get_rope_index`` on padded, non-square, continued rows;
- preprocessing parity at the released checkpoints' real sizes, without building the models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tvprompt.models.registry import load_adapter
from tvprompt.models.tiny import build_tiny_model

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "paligemma", "gemma3"]
PROMPT, ANSWER = "What shape is this?", "red circle"

# Expected vision-feature shapes of the tiny checkpoints: (encoder, projected) tokens x width.
FEATURE_SHAPES = {
    "qwen2_vl": ((16, 32), (4, 32)),  # 4x4 patches before the 2x2 merger, 2x2 LLM tokens
    "qwen2_5_vl": ((16, 32), (4, 32)),
    "idefics3": ((16, 32), (4, 32)),  # 4x4 SigLIP patches, pixel shuffle by 2
    "smolvlm": ((16, 32), (4, 32)),
    "paligemma": ((16, 32), (16, 32)),  # one token per patch
    "gemma3": ((16, 32), (4, 32)),  # 4x4 patches average-pooled to mm_tokens_per_image=4
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """family -> its tiny checkpoint directory, built once per module."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny_model(family, tmp_path_factory.mktemp(family) / "model", seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def load(tiny_dir):
    """family -> its tiny checkpoint loaded through ``hf:<dir>`` (default options), once per module."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_adapter(f"hf:{tiny_dir(family)}", device="cpu")
        return cache[family]

    return get


def _image(size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _smooth_uint8(h: int, w: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    rng = np.random.default_rng(0)
    smooth = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.4 + 0.5
    return (np.clip(smooth + rng.normal(0, 0.05, smooth.shape), 0, 1) * 255).round().astype(np.uint8)


def _to01(uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(uint8)).permute(2, 0, 1)[None].float() / 255


def native_inputs(adapter, pixels: torch.Tensor, prompt: str, answer: str, drop: str | None = None):
    """(model kwargs, prefix length): what the family's HF processor hands the model, positions left
    to the model itself. ``drop`` removes or corrupts one family-specific field."""
    hw = (pixels.shape[-2], pixels.shape[-1])
    prefix, ans = adapter.prompt_ids(prompt, hw), adapter.answer_ids(answer)
    ids = torch.tensor([prefix + ans])
    pixel_values = adapter.preprocess(pixels)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    family = adapter.family
    if family in ("qwen2_vl", "qwen2_5_vl"):
        kw.update(pixel_values=pixel_values, image_grid_thw=adapter.grid_thw(1, hw),
                  mm_token_type_ids=(ids == adapter.image_token_id).int())
        if drop:
            kw.pop("mm_token_type_ids")
    elif family in ("idefics3", "smolvlm"):
        kw.update(pixel_values=pixel_values[:, None],
                  pixel_attention_mask=torch.ones(1, 1, *pixel_values.shape[-2:], dtype=torch.bool))
    elif family == "paligemma":  # 0 = prefix (bidirectional), 1 = answer suffix (causal)
        kw.update(pixel_values=pixel_values, token_type_ids=torch.tensor([[0] * len(prefix) + [1] * len(ans)]))
        if drop:
            kw["token_type_ids"] = torch.zeros_like(ids)  # the answer would see itself bidirectionally
    elif family == "gemma3":  # 1 = image tokens (bidirectional block), 0 = text
        kw.update(pixel_values=pixel_values, token_type_ids=(ids == adapter.image_token_id).long())
        if drop:
            kw.pop("token_type_ids")
    return kw, len(prefix)


def _native_loss(adapter, kw, n_prefix: int) -> torch.Tensor:
    logits = adapter.model(**kw).logits[0]
    targets = kw["input_ids"][0, n_prefix:]
    return F.cross_entropy(logits[n_prefix - 1 : -1].float(), targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_loss_equals_the_models_own_forward(load, family):
    adapter = load(family)
    pixels = torch.rand(1, 3, 40, 64, generator=torch.Generator().manual_seed(2))  # non-square canvas
    with torch.no_grad():
        ours = adapter.lm_loss(pixels, [PROMPT], [ANSWER])
        native = _native_loss(adapter, *native_inputs(adapter, pixels, PROMPT, ANSWER))
    torch.testing.assert_close(ours, native, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "paligemma", "gemma3"])
def test_dropping_the_family_field_changes_the_loss(load, family):
    """The fields the adapter builds matter: without them the same tokens give another loss
    (Qwen2.5-VL: 1-D positions; PaliGemma: a bidirectional answer; Gemma 3: a causal image block)."""
    adapter = load(family)
    pixels = _image()
    with torch.no_grad():
        right = _native_loss(adapter, *native_inputs(adapter, pixels, PROMPT, ANSWER))
        wrong = _native_loss(adapter, *native_inputs(adapter, pixels, PROMPT, ANSWER, drop="field"))
    assert abs(right.item() - wrong.item()) > 1e-6  # same positions would give bitwise-equal losses


@pytest.mark.parametrize("family", ["qwen2_vl"])
def test_qwen2_vl_raises_without_mm_token_type_ids(load, family):
    adapter = load(family)
    kw, _ = native_inputs(adapter, _image(), PROMPT, ANSWER, drop="field")
    with torch.no_grad(), pytest.raises(ValueError, match="mm_token_type_ids"):
        adapter.model(**kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_shapes(load, family):
    adapter = load(family)
    pixels = torch.cat([_image(seed=0), _image(seed=1)])
    enc, proj = FEATURE_SHAPES[adapter.family]
    assert tuple(adapter.vision_features(pixels, "encoder").shape) == (2, *enc)
    assert tuple(adapter.vision_features(pixels, "projected").shape) == (2, *proj)


@pytest.mark.parametrize("family", FAMILIES)
def test_score_choices_with_a_single_choice_and_long_prompt(load, family):
    adapter = load(family)
    pixels = torch.cat([_image(seed=0), _image(seed=1)])
    prompts = ["Is there a red circle?", "How many shapes are there? Answer with one word, please, now."]
    scores = adapter.score_choices(pixels, prompts, ["yes"])
    with torch.no_grad():
        brute = torch.tensor([[-adapter.lm_loss(pixels[b : b + 1], [prompts[b]], ["yes"]).item()] for b in range(2)])
    torch.testing.assert_close(scores, brute, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["gemma3"])
def test_gemma3_projection_is_initialised(load, family):
    adapter = load(family)
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    weight = adapter.model.model.multi_modal_projector.mm_input_projection_weight
    assert weight.abs().mean() > 0.05
    random = Gemma3ForConditionalGeneration(Gemma3Config.from_dict(adapter.model.config.to_dict()))
    assert random.model.multi_modal_projector.mm_input_projection_weight.abs().max() == 0  # the trap


# ---- Qwen: fixed grid and M-RoPE ----------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_grid_follows_the_canvas(load, family):
    """One grid per canvas, the processor's: 64x64 -> 56x56 (2x2 LLM tokens), 40x64 -> 56x84 (2x3)."""
    adapter = load(family)
    assert adapter.preprocess(torch.rand(2, 3, 64, 64)).shape == (2 * 4 * 4, 3 * 2 * 14 * 14)
    assert adapter.preprocess(torch.rand(2, 3, 40, 64)).shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    assert adapter.llm_grid((40, 64)) == (2, 3)
    ids = adapter.prompt_ids(PROMPT, (40, 64))
    assert ids.count(adapter.image_token_id) == 6
    # a non-square grid through the whole model: cached scoring equals per-choice forwards
    pixels = torch.rand(2, 3, 40, 64, generator=torch.Generator().manual_seed(3))
    prompts = [PROMPT, "How many shapes are there in the picture?"]
    scores = adapter.score_choices(pixels, prompts, ["circle", "two red squares"])
    with torch.no_grad():
        brute = torch.tensor([[-adapter.lm_loss(pixels[b : b + 1], [prompts[b]], [c]).item()
                               for c in ["circle", "two red squares"]] for b in range(2)])
    torch.testing.assert_close(scores, brute, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_mrope_positions_equal_get_rope_index(load, family):
    adapter = load(family)
    from tvprompt.models.families.qwen2_vl import mrope_positions
    from tvprompt.models.hf import pad_sequences

    img = adapter.image_token_id
    rows = [[7, 8, img] + [img] * 5 + [9, 10, 11], [7] + [img] * 6 + [9], [5, 6, 7, 8, 9] + [img] * 6]
    ids, mask = pad_sequences(rows, 0, "left")
    grid = torch.tensor([[1, 4, 6]] * 3)  # a 2 x 3 LLM grid: rows and columns differ
    expected, _ = adapter.model.model.get_rope_index(ids, (ids == img).int(), grid, attention_mask=mask)
    torch.testing.assert_close(mrope_positions(ids, mask, img, (2, 3)), expected, rtol=0, atol=0)


# ---- preprocessing parity at real sizes (no model needed) ---------------------------------------
def test_qwen_patchify_matches_processor_at_224():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tvprompt.models.families.qwen2_vl import patchify, qwen_preprocessing, smart_resize
    from tvprompt.models.preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing

    default = ImagePreprocessing(size=(224, 224), mean=CLIP_MEAN, std=CLIP_STD)
    pre = qwen_preprocessing({"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}, 28, default)
    assert pre.size == (224, 224)  # released checkpoints: a 224 canvas is its own grid, 64 LLM tokens
    assert smart_resize(200, 300, 28, 56 * 56, 28 * 28 * 1280) == (196, 308)
    uint8 = _smooth_uint8(224, 224)
    expected = Qwen2VLImageProcessorPil()(images=Image.fromarray(uint8), return_tensors="pt")
    ours = patchify(pre(_to01(uint8)), 14, 2, 2)  # what the adapter does: no resize at 224
    assert expected["image_grid_thw"].tolist() == [[1, 16, 16]]
    torch.testing.assert_close(ours, expected["pixel_values"].float(), atol=1e-5, rtol=0)


def test_qwen_processor_config_spellings():
    """Old checkpoints write min/max_pixels, new ones size.shortest/longest_edge (both in pixels)."""
    from tvprompt.models.families.qwen2_vl import pixel_bounds, smart_resize

    assert pixel_bounds({"min_pixels": 3136, "max_pixels": 12845056}) == (3136, 12845056)
    assert pixel_bounds({"size": {"shortest_edge": 3136, "longest_edge": 1003520}}) == (3136, 1003520)
    assert pixel_bounds(None) == (56 * 56, 28 * 28 * 1280)
    assert smart_resize(224, 224, 28, 3136, 12845056) == (224, 224)
    assert smart_resize(1000, 1000, 28, 3136, 200704) == (448, 448)  # capped by max_pixels


@pytest.mark.parametrize("shape", [(224, 224), (200, 300)])
def test_idefics3_lanczos_chain_matches_processor_at_364(shape):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from tvprompt.models.families.idefics3 import first_resize_size
    from tvprompt.models.pil_resample import pil_resize

    h, w = shape
    uint8 = _smooth_uint8(h, w)
    processor = Idefics3ImageProcessorPil(do_image_splitting=False)  # 1456 longest edge, then 364
    expected = torch.as_tensor(np.asarray(
        processor(images=[[Image.fromarray(uint8)]], return_tensors="np")["pixel_values"])).reshape(1, 3, 364, 364)
    mh, mw = first_resize_size(h, w, 1456)
    ours = (pil_resize(_to01(uint8), (h, mh, 364), (w, mw, 364), "lanczos") - 0.5) / 0.5
    diff = (ours - expected).abs()
    # PIL rounds (and clips Lanczos overshoot) to uint8 between its passes; we do not.
    assert diff.mean() < 0.004 and diff.max() < 0.1, (diff.mean().item(), diff.max().item())


@pytest.mark.parametrize("kind,pil", [("lanczos", Image.LANCZOS), ("bicubic", Image.BICUBIC),
                                      ("bilinear", Image.BILINEAR)])
@pytest.mark.parametrize("src,dst", [((48, 64), (32, 32)), ((32, 20), (96, 75))])
def test_pil_resample_matches_pil(kind, pil, src, dst):
    from tvprompt.models.pil_resample import pil_resize

    x = F.interpolate(torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0)), size=src,
                      mode="bilinear", align_corners=False) * 0.8 + 0.1  # overshoot stays inside [0, 255]
    uint8 = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    ref = _to01(np.asarray(Image.fromarray(uint8).resize(dst[::-1], pil)))
    ours = pil_resize(_to01(uint8), (src[0], dst[0]), (src[1], dst[1]), kind)
    assert (ours - ref).abs().max() < 1.5 / 255  # PIL rounds to uint8 after each of its two passes


def test_pil_resample_rejects_unknown_filter():
    from tvprompt.models.pil_resample import resize_matrix

    with pytest.raises(ValueError, match="unknown PIL filter"):
        resize_matrix((4, 2), "box")


# ---- chat families end an answer with their end-of-turn token ------------------------------------
@pytest.mark.parametrize("family,token", [("qwen2_vl", "<|im_end|>"), ("smolvlm", "<end_of_utterance>"),
                                          ("gemma3", "<end_of_turn>"), ("paligemma", "</s>")])
def test_answers_end_with_the_turn_end_token(load, family, token):
    adapter = load(family)
    end = adapter.tokenizer.convert_tokens_to_ids(token)
    assert adapter.end_id == end != adapter.tokenizer.unk_token_id
    assert adapter.answer_ids("red circle")[-1] == end


def test_turn_end_falls_back_to_eos_for_tokenizers_without_it():
    from tvprompt.models.chat import turn_end_id
    from tvprompt.models.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    assert turn_end_id(tokenizer, "<end_of_turn>") == tokenizer.eos_token_id


# ---- loading options on these families --------------------------------------------------------
def _pixel_grad(adapter, pixels: torch.Tensor) -> torch.Tensor:
    pixels = pixels.clone().requires_grad_(True)
    adapter.lm_loss(pixels, [PROMPT, "How many?"], [ANSWER, "3"]).backward()
    return pixels.grad


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpointing_eager_and_bf16(load, tiny_dir, family):
    """Gradient checkpointing keeps the pixel gradient; eager attention (its own masks for the
    bidirectional image / prefix blocks) scores like SDPA; bf16 runs with fp32 losses."""
    plain, source = load(family), f"hf:{tiny_dir(family)}"
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    ckpt = load_adapter(source, device="cpu", gradient_checkpointing=True)
    torch.testing.assert_close(_pixel_grad(ckpt, pixels), _pixel_grad(plain, pixels))
    eager = load_adapter(source, device="cpu", attn_implementation="eager")
    prompts, choices = [PROMPT, "How many shapes are there?"], ["circle", "a red square"]
    torch.testing.assert_close(eager.score_choices(pixels, prompts, choices),
                               plain.score_choices(pixels, prompts, choices), atol=1e-5, rtol=1e-5)
    bf16 = load_adapter(source, device="cpu", dtype="bf16")
    grad = _pixel_grad(bf16, pixels)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
