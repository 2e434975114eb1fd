"""`tvp zoo build`: train the mini zoo from scratch on the ShapeWorld pretraining distribution.

Read top to bottom: data → checkpoint from the family's tiny builder → stage 1 (vision tower on
dense labels) → stage 2 (whole model on the LM loss) → evaluation → manifest. Everything is seeded
and step-counted (never time-limited), so a rebuild on the same software gives the same weights.

The models are trained through their own adapter (``load_adapter("hf:<dir>")``, weights made
trainable for the build): ``adapter.lm_loss`` builds exactly the token sequences that prompt
training and ``score_choices`` use later, so the zoo speaks the adapters' prompt format.

Training images are the padded layout of TVP half of the time (the image shrunk inside a black
border of random width, as ``prompt.apply`` makes it at δ = 0), so a prompted image is in
distribution. Stage 1 adds cheap dense supervision the answer tokens alone lack: from the mean
vision feature, a linear head predicts which shapes and colours are present and how many objects
there are. The head is dropped afterwards; what ships is the plain transformers model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import shapeworld as sw
from ..environment import cpu_platform, versions
from ..files import atomic_dir
from .recipes import GUIDE, RECIPES, GuideRecipe, Recipe

log = logging.getLogger(__name__)

TRAIN_SEED = 0  # ShapeWorld seed of the training images
TRAIN_RES = 112  # training images are stored at this size (models see 32-64 px)
EVAL_START = 1_000_000  # evaluation samples use indices far from the training ones
QUICK_N = 20  # the manifest also records accuracy on the first QUICK_N eval samples (fast re-checks)
N_AUX = 2 * len(sw.SHAPES) + sw.MAX_COUNT  # shape presence, colour presence, count


def build_command(n_per_task: int, eval_per_task: int, threads: int) -> str:
    """The command recorded in manifests (CPU results can differ in the last bits across thread counts)."""
    return f"tvp zoo build --n-per-task {n_per_task} --eval-per-task {eval_per_task} --threads {threads}"


# ---------------------------------------------------------------- data


@dataclass
class ZooData:
    images: torch.Tensor  # (N, 3, R, R) uint8
    prompts: list[str]
    answers: list[str]
    tasks: list[str]
    aux: torch.Tensor  # (N, N_AUX) float: shape presence | colour presence | count one-hot

    @cached_property
    def task_rows(self) -> dict[str, torch.Tensor]:
        return {t: torch.tensor([i for i, x in enumerate(self.tasks) if x == t]) for t in sw.TASKS}


def make_train_data(n_per_task: int, seed: int = TRAIN_SEED, res: int = TRAIN_RES) -> ZooData:
    images, prompts, answers, tasks, aux = [], [], [], [], []
    colors = list(sw.COLORS)
    for task in sw.TASKS:
        for s in sw.iter_samples(task, n_per_task, distribution="pretrain", seed=seed):
            images.append(s.image)
            prompts.append(s.question)
            answers.append(s.answer)
            tasks.append(task)
            row = np.zeros(N_AUX, np.float32)
            for o in s.objects:
                row[sw.SHAPES.index(o.shape)] = 1
                row[len(sw.SHAPES) + colors.index(o.color)] = 1
            row[2 * len(sw.SHAPES) + len(s.objects) - 1] = 1
            aux.append(row)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    chunks = [F.interpolate(c.float(), size=(res, res), mode="bilinear", antialias=True) for c in x.split(512)]
    x = torch.cat(chunks).round().clamp(0, 255).to(torch.uint8)
    return ZooData(x, prompts, answers, tasks, torch.from_numpy(np.stack(aux)))


def make_eval_data(n_per_task: int, distribution: str, seed: int = TRAIN_SEED) -> dict[str, tuple]:
    """{task: (uint8 images (n,3,224,224), prompts, answers, choices)}."""
    out = {}
    for task in sw.TASKS:
        samples = list(sw.iter_samples(task, n_per_task, distribution=distribution, seed=seed, start=EVAL_START))
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
        out[task] = (x, [s.question for s in samples], [s.answer for s in samples], list(sw.CHOICES[task]))
    return out


def augment(x01: torch.Tensor, generator: torch.Generator, p_shrink: float = 0.5,
            max_border: float = 0.3) -> torch.Tensor:
    """Random horizontal flip, and half the time TVP's padded layout: the image shrunk inside a
    black border of random width (up to ``max_border`` of the side). One batched grid_sample."""
    b = x01.shape[0]
    shrink = torch.rand(b, generator=generator) < p_shrink
    border = torch.rand(b, generator=generator) * max_border
    scale = torch.where(shrink, 1 - 2 * border, torch.ones(b))
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = flip / scale
    theta[:, 1, 1] = 1 / scale
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def lr_at(step: int, total: int, peak: float, warmup: int = 20) -> float:
    """Linear warm-up then cosine decay to 5 % of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def aux_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dense labels from the pooled vision feature: for one-object images the shape and colour
    classes (cross-entropy: the strong signal recognition needs), for scenes the presence of each
    shape and colour (binary), and for all the object count."""
    k = len(sw.SHAPES)
    single = target[:, 2 * k] > 0  # count one-hot: exactly one object
    loss = F.cross_entropy(logits[:, 2 * k:], target[:, 2 * k:].argmax(-1))
    if single.any():
        loss = loss + F.cross_entropy(logits[single, :k], target[single, :k].argmax(-1))
        loss = loss + F.cross_entropy(logits[single, k:2 * k], target[single, k:2 * k].argmax(-1))
    if (~single).any():
        loss = loss + F.binary_cross_entropy_with_logits(logits[~single, :2 * k], target[~single, :2 * k])
    return loss


def sample_indices(data: ZooData, batch_size: int, generator: torch.Generator,
                   shares: dict[str, float]) -> torch.Tensor:
    """Uniform over all samples, except that ``shares[task]`` of the batch comes from that task
    (shape recognition is what small ViTs learn slowest, existence what small LMs learn slowest)."""
    parts = []
    for task, share in shares.items():
        k = int(round(batch_size * share))
        rows = data.task_rows[task]
        parts.append(rows[torch.randint(0, len(rows), (k,), generator=generator)])
    rest = batch_size - sum(len(p) for p in parts)
    parts.append(torch.randint(0, data.images.shape[0], (rest,), generator=generator))
    return torch.cat(parts)


# ---------------------------------------------------------------- checkpoints


def corpus() -> list[str]:
    """What the zoo tokenizers are trained on: prompt formats and every ShapeWorld text."""
    from ..models.tiny import DEFAULT_CORPUS

    words = [" ".join(sw.SHAPES), " ".join(sw.COLORS), " ".join(sw.COUNT_WORDS), "yes no"]
    questions = [sw.QUESTIONS["shape"], sw.QUESTIONS["color"], sw.QUESTIONS["count"]]
    questions += [sw.QUESTIONS["exist"].format(color=c) for c in sw.COLORS]
    captions = [f"a photo of a {c} {s}." for c in sw.COLORS for s in sw.SHAPES]
    captions += [f"a photo of {n} shapes." for n in sw.COUNT_WORDS] + [f"a photo of a {c} shape." for c in sw.COLORS]
    return list(DEFAULT_CORPUS) + words * 8 + questions * 4 + captions


def _set(config: Any, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    obj = config
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def init_checkpoint(recipe: Recipe, directory: Path) -> None:
    """A randomly initialised checkpoint of ``recipe`` written like a downloaded one."""
    import transformers

    from ..models.tiny import init_normal_, tiny_spec, tiny_tokenizer

    tokenizer = tiny_tokenizer(recipe.family, corpus=corpus())
    spec = tiny_spec(recipe.family, tokenizer, **recipe.overrides)
    for key, value in recipe.edits.items():
        _set(spec.config, key, value)
    torch.manual_seed(recipe.seed)
    model = getattr(transformers, spec.model_class)(spec.config)
    with torch.no_grad():
        if hasattr(model, "query_tokens"):  # Q-Former families: a trainable start, not the tests' large init
            init_normal_(model, std=0.02)
            torch.nn.init.normal_(model.query_tokens, std=1.0)
        elif spec.init is not None:
            spec.init(model)
    processor = {"image_processor_type": spec.image_processor_type, **spec.preprocessing.to_processor_config()}
    processor.update(spec.processor_extra or {})
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if getattr(spec, "save_extra", None) is not None:
        spec.save_extra(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- training


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", leave=False)


def train_member(adapter: Any, recipe: Recipe, data: ZooData, progress: bool = True) -> dict[str, float]:
    """Stage 1 then stage 2 on ``adapter.model`` in place; returns final losses."""
    model = adapter.model
    model.requires_grad_(True)
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    heads: dict[str, torch.nn.Linear] = {}  # one auxiliary head per feature kind
    params: list[torch.nn.Parameter] = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    total = recipe.vision_steps + recipe.lm_steps
    losses = {"aux": float("nan"), "lm": float("nan")}
    bar = _progress(total, recipe.name, progress)
    for step in range(total):
        stage1 = step < recipe.vision_steps
        if stage1:
            idx = sample_indices(data, recipe.vision_batch_size, gen, {"shape": recipe.shape_share})
        else:
            idx = sample_indices(data, recipe.batch_size, gen, {"exist": recipe.exist_share})
        x = augment(data.images[idx].float() / 255, gen, max_border=recipe.max_border)
        if stage1:
            kind, loss_lm = "encoder", None
            feats = adapter.vision_features(x, kind)
        else:
            kind = recipe.stage2_aux
            prompts = [data.prompts[i] for i in idx.tolist()]
            answers = [data.answers[i] for i in idx.tolist()]
            loss_lm, feats = adapter.lm_loss_with_features(x, prompts, answers, kind)
        pooled = feats.float().mean(1)
        if kind not in heads:
            heads[kind] = torch.nn.Linear(pooled.shape[-1], N_AUX)
            opt.add_param_group({"params": list(heads[kind].parameters())})
            params += list(heads[kind].parameters())
        loss_aux = aux_loss(heads[kind](pooled), data.aux[idx])
        loss = loss_aux if loss_lm is None else loss_lm + 0.5 * loss_aux
        stage_step, stage_total = (step, recipe.vision_steps) if stage1 else (
            step - recipe.vision_steps, recipe.lm_steps)
        for group in opt.param_groups:
            group["lr"] = lr_at(stage_step, stage_total, recipe.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses["aux"] = float(loss_aux.detach())
        if loss_lm is not None:
            losses["lm"] = float(loss_lm.detach())
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
    bar.close()
    model.requires_grad_(False)
    model.eval()
    return losses


def evaluate_adapter(adapter: Any, eval_data: dict[str, tuple], batch_size: int = 50) -> dict[str, float]:
    """Top-1 accuracy per task, ranking the choices with ``score_choices``."""
    out = {}
    for task, (x, prompts, answers, choices) in eval_data.items():
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            px = x[i:i + batch_size].float() / 255
            with torch.no_grad():
                scores = adapter.score_choices(px, prompts[i:i + batch_size], choices)
            pred = scores.argmax(-1).tolist()
            correct += sum(choices[p] == a for p, a in zip(pred, answers[i:i + batch_size], strict=True))
        out[task] = round(correct / x.shape[0], 4)
    return out


def _head(eval_data: dict[str, tuple], n: int) -> dict[str, tuple]:
    return {t: (x[:n], p[:n], a[:n], c) for t, (x, p, a, c) in eval_data.items()}


def chance() -> dict[str, float]:
    return {t: round(1 / len(sw.CHOICES[t]), 4) for t in sw.TASKS}


def majority(eval_data: dict[str, tuple]) -> dict[str, float]:
    """Per task, the accuracy of always answering the most frequent answer (a floor above chance)."""
    return {t: round(Counter(answers).most_common(1)[0][1] / len(answers), 4)
            for t, (_, _, answers, _) in eval_data.items()}


def same_platform(recorded: dict[str, Any] | None, threads: int) -> bool:
    """True when a rebuild here with ``threads`` can be expected to reproduce ``recorded`` bit for bit."""
    return bool(recorded) and recorded == cpu_platform(threads)


def build_member(recipe: Recipe, data: ZooData, evals: dict[str, dict], output: Path, *,
                 command: str, progress: bool = True) -> dict[str, Any]:
    from ..models.registry import load_adapter

    t0 = time.time()
    with atomic_dir(output / recipe.name) as tmp:
        init_checkpoint(recipe, tmp)
        adapter = load_adapter(f"hf:{tmp}", device="cpu", dtype="float32", attn_implementation="sdpa")
        losses = train_member(adapter, recipe, data, progress)
        train_s = time.time() - t0
        acc = {dist: evaluate_adapter(adapter, ev) for dist, ev in evals.items()}
        quick = {dist: evaluate_adapter(adapter, _head(ev, QUICK_N)) for dist, ev in evals.items()}
        adapter.model.save_pretrained(tmp)
        manifest = {
            "name": recipe.name, "kind": "mllm", "family": recipe.family,
            "architecture": type(adapter.model).__name__, "description": recipe.description,
            "parameters": sum(p.numel() for p in adapter.model.parameters()),
            "input_size": list(adapter.input_size),
            "build_command": command, "seed": recipe.seed, "data_version": sw.DATA_VERSION,
            "data": {"generator": "tvprompt.data.shapeworld", "distribution": "pretrain", "seed": TRAIN_SEED,
                     "n_per_task": data.images.shape[0] // len(sw.TASKS), "augment": "flip + padded layout"},
            "recipe": asdict(recipe), "final_losses": losses,
            "accuracy": acc, "accuracy_quick": quick, "chance": chance(),
            "majority": {dist: majority(ev) for dist, ev in evals.items()},
            "eval": {"n_per_task": next(iter(next(iter(evals.values())).values()))[0].shape[0],
                     "start_index": EVAL_START, "seed": TRAIN_SEED, "image_size": sw.IMAGE_SIZE,
                     "method": "score_choices top-1"},
            "train_seconds": round(train_s, 1), "versions": versions(), "platform": cpu_platform(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("%s: %s (%.0f s)", recipe.name, acc, train_s)
    return manifest


# ---------------------------------------------------------------- the CLIP guide


def _caption(obj_list: list[sw.SceneObject], rng: np.random.Generator) -> str:
    if len(obj_list) > 1 or rng.random() < 0.25:
        if rng.random() < 0.5:
            return f"a photo of {len(obj_list)} shapes."
        return f"a photo of a {obj_list[int(rng.integers(len(obj_list)))].shape}."
    o = obj_list[0]
    return [f"a photo of a {o.shape}.", f"a photo of a {o.color} shape.", f"a photo of a {o.color} {o.shape}."][
        int(rng.integers(3))]


def tse_texts() -> dict[str, list[str]]:
    """Per task, the guide texts of every choice (what the built-in task specs' tse_text renders)."""
    return {"shape": [f"a photo of a {s}." for s in sw.SHAPES],
            "color": [f"a photo of a {c} shape." for c in sw.COLORS],
            "count": [f"a photo of {n} shapes." for n in sw.COUNT_WORDS]}


def build_guide(recipe: GuideRecipe, n_per_task: int, evals: dict[str, dict], output: Path, *,
                command: str, progress: bool = True) -> dict[str, Any]:
    """A tiny ``CLIPModel`` trained contrastively on ShapeWorld captions."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPModel

    from ..models.preprocessing import CLIP_MEAN, CLIP_STD, ImagePreprocessing
    from ..models.tiny import build_tokenizer

    t0 = time.time()
    tok = build_tokenizer(corpus=corpus())
    tok._tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.eos_token_id)])
    h = recipe.hidden
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": h, "intermediate_size": 2 * h,
                     "num_hidden_layers": recipe.layers,
                     "num_attention_heads": 4, "max_position_embeddings": 32, "projection_dim": h,
                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id},
        vision_config={"image_size": recipe.image_size, "patch_size": recipe.patch_size, "hidden_size": h,
                       "intermediate_size": 2 * h, "num_hidden_layers": recipe.layers, "num_attention_heads": 4,
                       "projection_dim": h},
        projection_dim=h,
    )
    torch.manual_seed(recipe.seed)
    model = CLIPModel(config)
    pre = ImagePreprocessing(size=(recipe.image_size,) * 2, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic",
                             shortest_edge=recipe.image_size)
    # training pairs: every ShapeWorld task's pretraining images with a caption drawn per sample
    rng = np.random.default_rng(recipe.seed)
    images, captions = [], []
    for task in ("shape", "color", "count", "exist"):
        for s in sw.iter_samples(task, n_per_task, distribution="pretrain", seed=TRAIN_SEED):
            images.append(s.image)
            captions.append(_caption(s.objects, rng))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = torch.cat([F.interpolate(c.float(), size=(TRAIN_RES,) * 2, mode="bilinear", antialias=True)
                   for c in x.split(512)]).round().clamp(0, 255).to(torch.uint8)
    texts = sorted(set(captions))
    text_index = torch.tensor([texts.index(c) for c in captions])
    enc = tok(texts, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(recipe.seed)
    bar = _progress(recipe.steps, recipe.name, progress)
    loss_value = float("nan")
    for step in range(recipe.steps):
        idx = torch.randint(0, x.shape[0], (recipe.batch_size,), generator=gen)
        augmented = augment(x[idx].float() / 255, gen, max_border=recipe.max_border)
        img = _emb(model.get_image_features(pixel_values=pre(augmented)))
        txt = _emb(model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask))
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T  # (B, T) over the distinct captions
        loss = F.cross_entropy(logits, text_index[idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.steps, recipe.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    model.eval()
    acc = {dist: zero_shot(model, tok, pre, ev) for dist, ev in evals.items()}
    with atomic_dir(output / recipe.name) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        processor = {"image_processor_type": "CLIPImageProcessor", **pre.to_processor_config()}
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
        manifest = {
            "name": recipe.name, "kind": "guide", "family": "clip", "architecture": "CLIPModel",
            "description": "tiny CLIP (ViT 48 px patch 8 + text transformer) trained contrastively on ShapeWorld "
            "captions",
            "parameters": sum(p.numel() for p in model.parameters()), "input_size": list(pre.size),
            "build_command": command, "seed": recipe.seed, "data_version": sw.DATA_VERSION,
            "data": {"generator": "tvprompt.data.shapeworld", "distribution": "pretrain", "seed": TRAIN_SEED,
                     "n_per_task": n_per_task, "captions": len(texts)},
            "recipe": asdict(recipe), "final_losses": {"contrastive": loss_value},
            "accuracy": acc, "chance": {t: v for t, v in chance().items() if t in tse_texts()},
            "eval": {"method": "zero-shot over tse texts", "start_index": EVAL_START},
            "train_seconds": round(time.time() - t0, 1), "versions": versions(), "platform": cpu_platform(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("%s: %s", recipe.name, acc)
    return manifest


def _emb(out: Any) -> torch.Tensor:
    """CLIP ``get_*_features`` return a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def zero_shot(model: Any, tok: Any, pre: Any, eval_data: dict[str, tuple]) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for task, texts in tse_texts().items():
            x, _, answers, choices = eval_data[task]
            enc = tok(texts, padding=True, return_tensors="pt")
            t = F.normalize(_emb(model.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask)),
                            dim=-1)
            i = F.normalize(_emb(model.get_image_features(pixel_values=pre(x.float() / 255))), dim=-1)
            pred = (i @ t.T).argmax(-1).tolist()
            out[task] = round(sum(choices[p] == a for p, a in zip(pred, answers, strict=True)) / len(answers), 4)
    return out


# ---------------------------------------------------------------- the whole zoo


def build_zoo(output: Path, *, names: list[str] | None = None, n_per_task: int = 1500, eval_per_task: int = 100,
              threads: int = 2, progress: bool = True, scale: float = 1.0) -> list[dict[str, Any]]:
    """Build the zoo members ``names`` (default: every MLLM and the guide) into ``output``.

    ``scale`` multiplies every step count (tests use a tiny fraction; manifests record it).
    """
    from ..errors import UsageError

    torch.set_num_threads(threads)
    recipes = {r.name: r for r in RECIPES}
    wanted = names or [*(r.name for r in RECIPES), GUIDE.name]
    unknown = [n for n in wanted if n not in recipes and n != GUIDE.name]
    if unknown:
        raise UsageError(f"unknown zoo member(s) {', '.join(unknown)}; known: {', '.join([*recipes, GUIDE.name])}")
    command = build_command(n_per_task, eval_per_task, threads)
    t0 = time.time()
    data = make_train_data(n_per_task)
    evals = {d: make_eval_data(eval_per_task, d) for d in sw.DISTRIBUTIONS}
    log.info("data ready in %.0f s", time.time() - t0)
    manifests = []
    for name in wanted:
        if name == GUIDE.name:
            g = GUIDE if scale == 1.0 else GuideRecipe(**{**asdict(GUIDE), "steps": max(1, int(GUIDE.steps * scale))})
            manifests.append(build_guide(g, n_per_task, evals, output, command=command, progress=progress))
            continue
        r = recipes[name]
        if scale != 1.0:
            r = Recipe(**{**asdict(r), "vision_steps": max(1, int(r.vision_steps * scale)),
                          "lm_steps": max(1, int(r.lm_steps * scale))})
        manifests.append(build_member(r, data, evals, output, command=command, progress=progress))
    log.info("zoo built in %.0f s", time.time() - t0)
    return manifests
