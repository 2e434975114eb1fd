"""Synthetic released checkpoints (LAVIS key layout, tiny shapes) and a hand-written reference forward.

The reference works on the *released* key names with plain torch functions, following the
released code (LAVIS ``eva_vit.py`` / Q-Former BERT, MiniGPT-4 ``encode_img`` / ``prompt_wrap``,
BLIVA ``forward``), so a converted model that matches it has every weight in the right place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CORPUS = [
    "###Human: <Img></Img> ###Assistant: ### What is in the image? What shape is this? Answer:",
    "a photo of a circle square triangle star red green blue yes no one two three four",
    "Describe the image. Is there a red circle? How many shapes are there? left right top bottom",
]


@dataclass
class Tiny:
    vision: int = 32
    vision_heads: int = 4
    vision_ffn: int = 48
    eva_blocks: int = 3  # the file holds one block more than the model keeps (like EVA-g's 40 vs 39)
    keep_blocks: int = 2
    patch: int = 14
    image: int = 28
    qformer: int = 32
    qformer_heads: int = 4
    qformer_ffn: int = 40
    qformer_layers: int = 4
    cross_freq: int = 2
    queries: int = 4
    bert_vocab: int = 60  # Q-Former text vocabulary (BLIVA); must equal len(bert tokenizer) + 1
    bert_positions: int = 64
    llm: int = 32
    meta: bool = False  # tensors on the meta device (shapes only)

    @property
    def patches(self) -> int:
        return (self.image // self.patch) ** 2


def _w(gen: torch.Generator | None, *shape: int, scale: float = 0.2) -> torch.Tensor:
    if gen is None:  # release-sized layouts: shapes only, no memory
        return torch.empty(*shape, device="meta")
    return torch.randn(*shape, generator=gen) * scale


def _ln(gen: torch.Generator | None, prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + _w(gen, dim, scale=0.1), f"{prefix}.bias": _w(gen, dim, scale=0.1)}


def _lin(gen: torch.Generator | None, prefix: str, out: int, inp: int, bias: bool = True) -> dict[str, torch.Tensor]:
    d = {f"{prefix}.weight": _w(gen, out, inp, scale=1 / math.sqrt(inp))}
    if bias:
        d[f"{prefix}.bias"] = _w(gen, out, scale=0.05)
    return d


def eva_vit_state(t: Tiny, seed: int = 1) -> dict[str, torch.Tensor]:
    """``eva_vit_g.pth`` layout (no ``visual_encoder.`` prefix), ``t.eva_blocks`` blocks."""
    g = None if t.meta else torch.Generator().manual_seed(seed)
    d = t.vision
    sd = {
        "cls_token": _w(g, 1, 1, d),
        "pos_embed": _w(g, 1, t.patches + 1, d),
        "patch_embed.proj.weight": _w(g, d, 3, t.patch, t.patch, scale=0.05),
        "patch_embed.proj.bias": _w(g, d, scale=0.05),
    }
    for i in range(t.eva_blocks):
        b = f"blocks.{i}"
        sd.update(_ln(g, f"{b}.norm1", d))
        sd[f"{b}.attn.q_bias"] = _w(g, d, scale=0.1)
        sd[f"{b}.attn.v_bias"] = _w(g, d, scale=0.1)
        sd[f"{b}.attn.qkv.weight"] = _w(g, 3 * d, d, scale=1 / math.sqrt(d))
        sd.update(_lin(g, f"{b}.attn.proj", d, d))
        sd.update(_ln(g, f"{b}.norm2", d))
        sd.update(_lin(g, f"{b}.mlp.fc1", t.vision_ffn, d))
        sd.update(_lin(g, f"{b}.mlp.fc2", d, t.vision_ffn))
    return sd


def qformer_state(t: Tiny, seed: int = 2, text: bool = True, heads: bool = True) -> dict[str, torch.Tensor]:
    """LAVIS Q-Former keys: ``Qformer.bert.*`` (+ text branch), ``query_tokens``, ``ln_vision``; stage-1 heads."""
    g = None if t.meta else torch.Generator().manual_seed(seed)
    h, q = t.qformer, "Qformer.bert"
    sd = {"query_tokens": _w(g, 1, t.queries, h, scale=0.5)}
    sd.update(_ln(g, "ln_vision", t.vision))
    sd.update(_ln(g, f"{q}.embeddings.LayerNorm", h))
    sd[f"{q}.embeddings.position_ids"] = torch.arange(t.bert_positions).unsqueeze(0)
    if text:
        sd[f"{q}.embeddings.word_embeddings.weight"] = _w(g, t.bert_vocab, h, scale=0.5)
        sd[f"{q}.embeddings.position_embeddings.weight"] = _w(g, t.bert_positions, h, scale=0.5)
    for i in range(t.qformer_layers):
        b = f"{q}.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            sd.update(_lin(g, f"{b}.attention.self.{name}", h, h))
        sd.update(_lin(g, f"{b}.attention.output.dense", h, h))
        sd.update(_ln(g, f"{b}.attention.output.LayerNorm", h))
        if i % t.cross_freq == 0:
            sd.update(_lin(g, f"{b}.crossattention.self.query", h, h))
            sd.update(_lin(g, f"{b}.crossattention.self.key", h, t.vision))
            sd.update(_lin(g, f"{b}.crossattention.self.value", h, t.vision))
            sd.update(_lin(g, f"{b}.crossattention.output.dense", h, h))
            sd.update(_ln(g, f"{b}.crossattention.output.LayerNorm", h))
        if text:
            sd.update(_lin(g, f"{b}.intermediate.dense", t.qformer_ffn, h))
            sd.update(_lin(g, f"{b}.output.dense", h, t.qformer_ffn))
            sd.update(_ln(g, f"{b}.output.LayerNorm", h))
        sd.update(_lin(g, f"{b}.intermediate_query.dense", t.qformer_ffn, h))
        sd.update(_lin(g, f"{b}.output_query.dense", h, t.qformer_ffn))
        sd.update(_ln(g, f"{b}.output_query.LayerNorm", h))
    if heads:  # stage-1 BLIP-2 file: MLM head, contrastive projections, ITM head, temperature
        sd.update(_lin(g, "Qformer.cls.predictions.transform.dense", h, h))
        sd.update(_ln(g, "Qformer.cls.predictions.transform.LayerNorm", h))
        sd["Qformer.cls.predictions.decoder.weight"] = _w(g, t.bert_vocab, h)
        sd["Qformer.cls.predictions.bias"] = _w(g, t.bert_vocab)
        sd.update(_lin(g, "vision_proj", 16, h))
        sd.update(_lin(g, "text_proj", 16, h))
        sd.update(_lin(g, "itm_head", 2, h))
        sd["temp"] = torch.tensor(0.07)
    return sd


def prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def save_pth(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def tiny_llama_dir(path: Path, t: Tiny, seed: int = 3) -> Path:
    """A Vicuna stand-in: ``LlamaForCausalLM`` + a byte-level BPE tokenizer with LLaMA's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=t.llm, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    for p in model.parameters():  # larger weights than the default init: distinct, non-flat logits
        torch.nn.init.normal_(p, std=0.2) if p.ndim > 1 else None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bert_tokenizer_dir(path: Path, t: Tiny) -> Path:
    """A bert-base-uncased stand-in whose vocabulary + ``[DEC]`` has ``t.bert_vocab`` entries."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += sorted({w.lower().strip("?:.") for line in CORPUS for w in line.split() if w.strip("?:.#<>/")})
    words += [f"w{i}" for i in range(t.bert_vocab - 1 - len(words))]
    assert len(words) == t.bert_vocab - 1
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    return path


# ---- the reference forward, on released key names ---------------------------------------------
def ref_eva_blocks(sd: dict[str, torch.Tensor], image: torch.Tensor, t: Tiny) -> list[torch.Tensor]:
    """LAVIS ``VisionTransformer.get_intermediate_layers``: the output of every kept block."""
    p = "visual_encoder."
    x = F.conv2d(image, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=t.patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[p + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[p + "pos_embed"]
    outs = []
    heads, d = t.vision_heads, t.vision
    for i in range(t.keep_blocks):
        b = f"{p}blocks.{i}."
        h = F.layer_norm(x, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        bias = torch.cat([sd[b + "attn.q_bias"], torch.zeros(d), sd[b + "attn.v_bias"]])
        qkv = F.linear(h, sd[b + "attn.qkv.weight"], bias).reshape(x.shape[0], x.shape[1], 3, heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(a, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + h
        outs.append(x)
    return outs


def ref_ln_vision(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd["ln_vision.weight"], sd["ln_vision.bias"],
                        eps=1e-5)  # nn.LayerNorm default


def _bert_attention(sd, b, x, kv, mask, heads):
    n, L, h = x.shape
    q = F.linear(x, sd[b + "self.query.weight"], sd[b + "self.query.bias"]).view(n, L, heads, -1).transpose(1, 2)
    k = F.linear(kv, sd[b + "self.key.weight"], sd[b + "self.key.bias"]).view(n, kv.shape[1], heads, -1).transpose(1, 2)
    v = F.linear(kv, sd[b + "self.value.weight"], sd[b + "self.value.bias"])
    v = v.view(n, kv.shape[1], heads, -1).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(h // heads)
    if mask is not None:
        scores = scores + (1.0 - mask[:, None, None, :].float()) * -10000.0
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, L, h)
    out = F.linear(ctx, sd[b + "output.dense.weight"], sd[b + "output.dense.bias"])
    return F.layer_norm(out + x, (h,), sd[b + "output.LayerNorm.weight"], sd[b + "output.LayerNorm.bias"], eps=1e-12)


def _bert_ffn(sd, b, x, suffix):
    h = F.gelu(F.linear(x, sd[f"{b}intermediate{suffix}.dense.weight"], sd[f"{b}intermediate{suffix}.dense.bias"]))
    out = F.linear(h, sd[f"{b}output{suffix}.dense.weight"], sd[f"{b}output{suffix}.dense.bias"])
    return F.layer_norm(out + x, (x.shape[-1],), sd[f"{b}output{suffix}.LayerNorm.weight"],
                        sd[f"{b}output{suffix}.LayerNorm.bias"], eps=1e-12)


def ref_qformer(sd: dict[str, torch.Tensor], image_embeds: torch.Tensor, t: Tiny,
                text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """LAVIS ``Qformer.bert(text_ids?, query_embeds=query_tokens, encoder_hidden_states=...)`` -> query outputs."""
    q = "Qformer.bert."
    n = image_embeds.shape[0]
    x = sd["query_tokens"].expand(n, -1, -1)
    mask = None
    if text_ids is not None:
        pos = torch.arange(text_ids.shape[1])
        txt = (sd[q + "embeddings.word_embeddings.weight"][text_ids]
               + sd[q + "embeddings.position_embeddings.weight"][pos])
        x = torch.cat([x, txt], 1)
        mask = torch.cat([torch.ones(n, t.queries, dtype=torch.long), text_mask], 1)
    x = F.layer_norm(x, (t.qformer,), sd[q + "embeddings.LayerNorm.weight"], sd[q + "embeddings.LayerNorm.bias"],
                     eps=1e-12)
    for i in range(t.qformer_layers):
        b = f"{q}encoder.layer.{i}."
        x = _bert_attention(sd, b + "attention.", x, x, mask, t.qformer_heads)
        query = x[:, : t.queries]
        if i % t.cross_freq == 0:
            query = _bert_attention(sd, b + "crossattention.", query, image_embeds, None, t.qformer_heads)
        query = _bert_ffn(sd, b, query, "_query")
        text_part = [_bert_ffn(sd, b, x[:, t.queries :], "")] if x.shape[1] > t.queries else []
        x = torch.cat([query, *text_part], 1)
    return x[:, : t.queries]


def ref_minigpt4_image_tokens(sd: dict[str, torch.Tensor], image: torch.Tensor, t: Tiny) -> torch.Tensor:
    """MiniGPT-4 ``encode_img``: llama_proj(Qformer(ln_vision(ViT(image))))."""
    enc = ref_ln_vision(sd, ref_eva_blocks(sd, image, t)[-1])
    return F.linear(ref_qformer(sd, enc, t), sd["llama_proj.weight"], sd["llama_proj.bias"])


def ref_bliva_image_tokens(sd: dict[str, torch.Tensor], image: torch.Tensor, t: Tiny,
                           text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """BLIVA ``forward``: [llm_proj(Qformer(text, ln_vision(ViT))), vision_project(block[-2][:, 1:])]."""
    blocks = ref_eva_blocks(sd, image, t)
    enc = ref_ln_vision(sd, blocks[-1])
    queries = F.linear(ref_qformer(sd, enc, t, text_ids, text_mask), sd["llm_proj.weight"], sd["llm_proj.bias"])
    patches = F.linear(blocks[-2][:, 1:], sd["vision_project.weight"], sd["vision_project.bias"])
    return torch.cat([queries, patches], 1)


# ---- files as the upstream runners save them ---------------------------------------------------
def rotary_buffers(prefix: str, layers: int, head_dim: int) -> dict[str, torch.Tensor]:
    """The LAVIS-era LLaMA code's saved ``inv_freq`` buffer of every layer (``prefix`` = ``llama_model.``)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return {f"{prefix}model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq.clone() for i in range(layers)}


def qformer_position_ids(t: Tiny) -> dict[str, torch.Tensor]:
    """The BERT embeddings' ``position_ids`` buffer, kept even where the embeddings themselves are removed."""
    return {"Qformer.bert.embeddings.position_ids": torch.arange(t.bert_positions).unsqueeze(0)}


def saved_llm(llama_dir: Path, prefix: str, extra_rows: int = 0, seed: int = 4) -> dict[str, torch.Tensor]:
    """The LLM as BLIVA's runner saves it: every weight in fp16, the vocabulary resized by ``extra_rows``
    random rows (BLIVA adds ``[PAD]``), and the rotary buffers."""
    from transformers import LlamaForCausalLM

    llm = LlamaForCausalLM.from_pretrained(llama_dir)
    sd = {prefix + k: v.detach().clone().half() for k, v in llm.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = sd[prefix + name]
        sd[prefix + name] = torch.cat([w, torch.randn(extra_rows, w.shape[1], generator=g).half() * 0.2])
    cfg = llm.config
    sd.update(rotary_buffers(prefix, cfg.num_hidden_layers, cfg.hidden_size // cfg.num_attention_heads))
    return sd


def runner_checkpoint(model: dict[str, torch.Tensor], epoch: int = 3) -> dict[str, object]:
    """LAVIS / MiniGPT-4 ``RunnerBase._save_checkpoint``: the state dict with the optimizer, config, scaler
    and epoch beside it (all weights-only loadable: tensors, numbers, strings, tuples, None)."""
    trainable = [v.float().clone().requires_grad_() for v in model.values() if v.is_floating_point()][:3]
    opt = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    sum(p.square().sum() for p in trainable).backward()
    opt.step()
    config = {"model": {"arch": "mini_gpt4", "freeze_vit": True, "end_sym": "###", "ckpt": None},
              "run": {"lr_sched": "linear_warmup_cosine_lr", "init_lr": 3e-5, "max_epoch": 5}}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 7}
    return {"model": model, "optimizer": opt.state_dict(), "config": config, "scaler": scaler, "epoch": epoch}


def slow_vicuna_dir(path: Path, t: Tiny, seed: int = 3) -> Path:
    """A Vicuna folder as FastChat's ``apply_delta`` writes it: the LLaMA SentencePiece ``tokenizer.model``
    (byte fallback, <unk>/<s>/</s> = 0/1/2) and no ``tokenizer.json``. Needs ``sentencepiece``."""
    import io

    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    path.mkdir(parents=True)
    (path / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False}
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    llm_config = LlamaConfig(vocab_size=400, hidden_size=t.llm, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2,
                             tie_word_embeddings=False)
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(llm_config)
    for p in llm.parameters():
        torch.nn.init.normal_(p, std=0.2) if p.ndim > 1 else None
    llm.save_pretrained(path)
    return path
