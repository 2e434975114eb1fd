"""Converters for the released MiniGPT-4 / VPGTrans / BLIVA checkpoints, on synthetic files.

The synthetic files have the released key names and layouts at tiny widths (``lavis_synth``).
A round trip converts them, loads the result the way a user does (``load_adapter("hf:<dir>")``)
and compares the adapter's image tokens and answer losses with a hand-written reference forward
that reads the *released* keys and follows the released code's sequence layout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lavis_synth import (
    Tiny,
    bert_tokenizer_dir,
    eva_vit_state,
    prefixed,
    qformer_position_ids,
    qformer_state,
    ref_bliva_image_tokens,
    ref_minigpt4_image_tokens,
    rotary_buffers,
    runner_checkpoint,
    save_pth,
    saved_llm,
    slow_vicuna_dir,
    tiny_llama_dir,
)
from tvprompt.errors import TvpError, UsageError
from tvprompt.models.paper import convert as paper_convert
from tvprompt.models.paper.convert import ConvertOptions, convert_bliva, convert_minigpt4, convert_vpgtrans
from tvprompt.models.paper.lavis_keys import LLM_REASON, map_lavis_key
from tvprompt.models.registry import load_adapter

T = Tiny()
OPTS = ConvertOptions(vision_layers=T.keep_blocks, vision_heads=T.vision_heads, qformer_heads=T.qformer_heads,
                      dtype="float32")
SRC = str(Path(__file__).resolve().parents[1] / "src")
PROMPTS = ["What shape is this?", "Is there a red circle?"]
ANSWERS = ["a red circle", "no"]
ROTARY = "LLaMA rotary-embedding buffer (inv_freq); transformers rebuilds it"
HEAD_DIM = T.llm // 4  # tiny_llama_dir: 4 heads


def _proj(name: str, out: int, inp: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{name}.weight": torch.randn(out, inp, generator=g) * 0.3,
            f"{name}.bias": torch.randn(out, generator=g) * 0.1}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("released")
    eva = eva_vit_state(T)
    lavis = {**prefixed(eva, "visual_encoder."), **qformer_state(T, text=False)}  # stage-1 BLIP-2 file
    stage2 = _proj("llama_proj", T.llm, T.qformer, 5)
    vpg = {**qformer_state(T, seed=7, text=False, heads=False), **_proj("llama_proj", T.llm, T.qformer, 8)}
    bliva = {**qformer_state(T, seed=9, text=True, heads=False), **_proj("llm_proj", T.llm, T.qformer, 10),
             **_proj("vision_project", T.llm, T.vision, 11)}
    return argparse.Namespace(
        dir=d, eva=eva, lavis=lavis, stage2=stage2, vpg=vpg, bliva=bliva,
        eva_pth=save_pth(eva, d / "eva_vit_g.pth"),
        lavis_pth=save_pth({"model": lavis}, d / "blip2_pretrained.pth"),
        stage2_pth=save_pth({"model": stage2}, d / "pretrained_minigpt4.pth"),
        vpg_pth=save_pth({"model": vpg}, d / "vl-vicuna.pth"),
        bliva_pth=save_pth({"model": bliva}, d / "bliva_vicuna7b.pth"),
        llama=tiny_llama_dir(d / "vicuna", T),
        bert=bert_tokenizer_dir(d / "bert", T),
    )


@pytest.fixture(scope="module")
def minigpt4(files):
    return convert_minigpt4(files.lavis_pth, files.stage2_pth, files.llama, files.dir / "minigpt4", options=OPTS)


def _llama(files):
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(files.llama).eval(), AutoTokenizer.from_pretrained(files.llama)


def _answer_loss(llm, pieces: list[torch.Tensor], answer: torch.Tensor) -> torch.Tensor:
    """Mean CE of ``answer`` ids after the embedded ``pieces`` (what the released forward's labels select)."""
    emb = llm.get_input_embeddings()
    seq = torch.cat([*pieces, emb(answer[None])], 1)
    logits = llm(inputs_embeds=seq).logits[0, -answer.numel() - 1 : -1]
    return F.cross_entropy(logits, answer)


def test_minigpt4_round_trip_matches_reference_forward(files, minigpt4):
    adapter = load_adapter(f"hf:{minigpt4}", device="cpu")
    assert adapter.family == "minigpt4"
    pixels = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    pixel_values = adapter.preprocess(pixels)
    ref_tokens = ref_minigpt4_image_tokens({**files.lavis, **files.stage2}, pixel_values, T)
    torch.testing.assert_close(adapter.vision_features(pixels, "projected"), ref_tokens, atol=1e-5, rtol=1e-4)
    enc = adapter.vision_features(pixels, "encoder")
    assert enc.shape == (2, T.patches + 1, T.vision)

    llm, tok = _llama(files)  # MiniGPT-4: <s> + "###Human: <Img>" + image + "</Img> {q} ###Assistant: " + "{a}###"
    emb = llm.get_input_embeddings()
    with torch.no_grad():
        for b in range(2):
            ids = lambda s: torch.tensor(tok(s, add_special_tokens=False).input_ids)  # noqa: E731
            pieces = [emb(torch.tensor([[tok.bos_token_id]])), emb(ids("###Human: <Img>")[None]), ref_tokens[b : b + 1],
                      emb(ids(f"</Img> {PROMPTS[b]} ###Assistant: ")[None])]
            expected = _answer_loss(llm, pieces, ids(ANSWERS[b] + "###"))
            got = adapter.lm_loss(pixels[b : b + 1], [PROMPTS[b]], [ANSWERS[b]])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_every_source_key_is_accounted_for(files, minigpt4):
    record = json.loads((minigpt4 / "conversion.json").read_text())
    n_source = len(files.lavis) + len(files.stage2)
    assert record["mapped_keys"] + sum(record["dropped_keys"].values()) == n_source
    assert record["dropped_keys"]["ViT block 2 (BLIP-2 keeps the first 2 blocks)"] == 13
    assert "Qformer.cls.predictions.decoder.weight" in record["dropped"]
    assert record["sources"][-1] == {"role": "stage2", "file": "pretrained_minigpt4.pth"}
    config = json.loads((minigpt4 / "config.json").read_text())
    assert config["model_type"] == "minigpt4" and config["end_sym"] == "###"
    assert config["vision_config"]["num_hidden_layers"] == T.keep_blocks
    assert config["qformer_config"]["cross_attention_frequency"] == T.cross_freq
    assert any(p.suffix == ".safetensors" for p in minigpt4.iterdir())


def test_bliva_round_trip_matches_reference_forward(files):
    out = convert_bliva(files.bliva_pth, files.llama, files.dir / "bliva", qformer_tokenizer=files.bert,
                        eva_vit=files.eva_pth, options=OPTS)
    adapter = load_adapter(f"hf:{out}", device="cpu")
    assert adapter.family == "bliva"
    from transformers import BertTokenizer

    bert = BertTokenizer.from_pretrained(files.bert)
    bert.add_special_tokens({"bos_token": "[DEC]"})
    sd = {**prefixed(files.eva, "visual_encoder."), **files.bliva}
    pixels = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    pixel_values = adapter.preprocess(pixels)
    llm, tok = _llama(files)
    # BLIVA adds [PAD] and resizes the LLM at load time; the converter fills the new row with the mean row.
    n = llm.get_input_embeddings().weight.shape[0]
    llm.resize_token_embeddings(n + 1, mean_resizing=False)
    with torch.no_grad():
        for layer in (llm.get_input_embeddings(), llm.get_output_embeddings()):
            layer.weight[n] = layer.weight[:n].mean(0)
    emb = llm.get_input_embeddings()
    eos = tok.convert_tokens_to_ids("</s>")  # BLIVA: bos = eos = unk = </s>
    with torch.no_grad():
        for b in range(2):
            text = bert([PROMPTS[b]], return_tensors="pt")
            image = ref_bliva_image_tokens(sd, pixel_values[b : b + 1], T, text.input_ids, text.attention_mask)
            prompt = torch.tensor([[eos] + tok(PROMPTS[b], add_special_tokens=False).input_ids])
            answer = torch.tensor(tok(ANSWERS[b], add_special_tokens=False).input_ids + [eos])
            expected = _answer_loss(llm, [image, emb(prompt)], answer)
            got = adapter.lm_loss(pixels[b : b + 1], [PROMPTS[b]], [ANSWERS[b]])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        empty = bert([""] * 2, return_tensors="pt")
        ref = ref_bliva_image_tokens(sd, pixel_values, T, empty.input_ids, empty.attention_mask)
        torch.testing.assert_close(adapter.vision_features(pixels, "projected"), ref, atol=1e-5, rtol=1e-4)
    long = adapter.qformer_inputs(["a photo of a red circle " * 40, "yes"])["qformer_input_ids"]
    assert long.shape == (2, 128)  # BLIVA max_txt_len, cut from the left as in LAVIS
    assert long[0, 0] == bert.cls_token_id and long[0, -1] == bert.sep_token_id
    assert adapter.tokenizer.bos_token == adapter.tokenizer.eos_token == "</s>"
    assert adapter.tokenizer.pad_token == "[PAD]"


def test_vpgtrans_cli_round_trip(files, tmp_path, capsys):
    out = tmp_path / "vpgtrans"
    cmd = [sys.executable, "-m", "tvprompt", "convert", "vpgtrans", "--ckpt", str(files.vpg_pth), "--eva-vit",
           str(files.eva_pth), "--llama", str(files.llama), "--output", str(out), "--vision-layers", "2",
           "--vision-heads", "4", "--qformer-heads", "4", "--dtype", "float32"]
    env = {**os.environ, "PYTHONPATH": SRC}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"hf:{out}" in run.stdout
    adapter = load_adapter(f"hf:{out}", device="cpu")
    assert adapter.family == "vpgtrans"
    pixels = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    ref = ref_minigpt4_image_tokens({**prefixed(files.eva, "visual_encoder."), **files.vpg},
                                    adapter.preprocess(pixels), T)
    torch.testing.assert_close(adapter.vision_features(pixels, "projected"), ref, atol=1e-5, rtol=1e-4)
    from tvprompt.cli import main

    capsys.readouterr()
    assert main(cmd[3:]) == 2  # in-process this time: refuses to overwrite, one line naming the fix
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1


def test_unknown_key_is_an_error_listing_it(files, tmp_path):
    bad = save_pth({"model": {**files.stage2, "llama_proj.extra_gate": torch.zeros(3)}}, tmp_path / "s2.pth")
    with pytest.raises(TvpError, match=r"cannot be mapped: llama_proj\.extra_gate"):
        convert_minigpt4(files.lavis_pth, bad, files.llama, tmp_path / "out", options=OPTS)
    assert not (tmp_path / "out").exists()


def test_missing_weight_is_an_error_listing_its_target(files, tmp_path):
    lavis = {k: v for k, v in files.lavis.items() if k != "Qformer.bert.encoder.layer.1.output_query.dense.weight"}
    path = save_pth({"model": lavis}, tmp_path / "lavis.pth")
    with pytest.raises(TvpError,
                       match=r"no source for 1 weights.*qformer\.encoder\.layer\.1\.output_query\.dense\.weight"):
        convert_minigpt4(path, files.stage2_pth, files.llama, tmp_path / "out", options=OPTS)


def test_stage2_without_llama_proj_is_refused(files, tmp_path):
    path = save_pth({"model": {"llama_proj.weight": files.stage2["llama_proj.weight"]}}, tmp_path / "s2.pth")
    with pytest.raises(TvpError, match="llama_proj.bias"):
        convert_minigpt4(files.lavis_pth, path, files.llama, tmp_path / "out", options=OPTS)


def test_shape_mismatch_names_the_weight_and_file(files, tmp_path):
    path = save_pth({"model": {**files.stage2, "llama_proj.weight": torch.zeros(T.llm, T.qformer + 1)}},
                    tmp_path / "s.pth")
    with pytest.raises(TvpError, match=r"shape mismatch.*language_projection\.weight.*s\.pth"):
        convert_minigpt4(files.lavis_pth, path, files.llama, tmp_path / "out", options=OPTS)


def test_half_of_a_qv_bias_pair_is_an_error(files, tmp_path):
    eva = {k: v for k, v in files.eva.items() if k != "blocks.1.attn.v_bias"}
    path = save_pth(eva, tmp_path / "eva.pth")
    with pytest.raises(TvpError, match=r"blocks\.1\.attn\.v_bias \(missing"):
        convert_vpgtrans(files.vpg_pth, files.llama, tmp_path / "out", eva_vit=path, options=OPTS)


def test_pickled_objects_are_never_loaded(files, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": files.stage2, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(TvpError, match="not a weights-only torch checkpoint"):
        convert_minigpt4(files.lavis_pth, path, files.llama, tmp_path / "out", options=OPTS)


def test_bliva_needs_a_matching_qformer_tokenizer(files, tmp_path):
    with pytest.raises(UsageError, match="qformer-tokenizer"):
        convert_bliva(files.bliva_pth, files.llama, tmp_path / "out", qformer_tokenizer=None, eva_vit=files.eva_pth,
                      options=OPTS)


@pytest.mark.parametrize(("key", "expected"), [
    ("visual_encoder.blocks.0.attn.proj.weight", ("map", "vision_model.encoder.layers.0.self_attn.projection.weight")),
    ("visual_encoder.blocks.38.mlp.fc1.bias", ("map", "vision_model.encoder.layers.38.mlp.fc1.bias")),
    ("visual_encoder.blocks.39.norm1.weight", ("drop", "ViT block 39 (BLIP-2 keeps the first 39 blocks)")),
    ("ln_vision.weight", ("map", "vision_model.post_layernorm.weight")),
    ("Qformer.bert.encoder.layer.4.crossattention.self.key.bias",
     ("map", "qformer.encoder.layer.4.crossattention.attention.key.bias")),
    ("Qformer.bert.encoder.layer.3.attention.self.query.weight",
     ("map", "qformer.encoder.layer.3.attention.attention.query.weight")),
    ("Qformer.bert.embeddings.LayerNorm.bias", ("map", "qformer.layernorm.bias")),
    ("Qformer.bert.encoder.layer.2.output.dense.weight",
     ("drop", "Q-Former text branch (this model feeds only the query tokens)")),
    ("llama_proj.weight", ("map", "language_projection.weight")),
    ("t5_proj.weight", ("drop", "another BLIP-2 language model")),
    ("visual_encoder.blocks.0.attn.rel_pos_bias", ("unknown", "")),
])
def test_key_rules_for_blip2_style_models(key, expected):
    assert map_lavis_key(key, vision_layers=39, qformer_text=False,
                         projections={"llama_proj": "language_projection"}) == expected


def test_key_rules_for_the_instruction_aware_qformer():
    rules = dict(vision_layers=39, qformer_text=True, projections={"llm_proj": "language_projection"})
    assert map_lavis_key("Qformer.bert.embeddings.LayerNorm.weight", **rules) == (
        "map", "qformer.embeddings.layernorm.weight")
    assert map_lavis_key("Qformer.bert.embeddings.word_embeddings.weight", **rules) == (
        "map", "qformer.embeddings.word_embeddings.weight")
    assert map_lavis_key("Qformer.bert.encoder.layer.2.output.LayerNorm.bias", **rules) == (
        "map", "qformer.encoder.layer.2.output.LayerNorm.bias")


def test_custom_template_and_end_symbol_are_written_and_used(files, tmp_path):
    template = "Give the following image: <Img><ImageHere></Img>. ###Human: {} ###Assistant: "
    out = convert_vpgtrans(files.vpg_pth, files.llama, tmp_path / "v", eva_vit=files.eva_pth, options=OPTS,
                           prompt_template=template, end_sym="\n")
    adapter = load_adapter(f"hf:{out}", device="cpu")
    assert adapter.model.config.prompt_template == template and adapter.end_sym == "\n"
    ids = adapter.prompt_ids("Is it red?")
    text = adapter.tokenizer.decode([i for i in ids if i != adapter.image_token_id], skip_special_tokens=True)
    assert text == "Give the following image: <Img></Img>. ###Human: Is it red? ###Assistant: "
    assert ids.count(adapter.image_token_id) == T.queries
    assert adapter.answer_ids("yes") == adapter.text_ids("yes\n")
    with pytest.raises(UsageError, match="<ImageHere>"):
        convert_vpgtrans(files.vpg_pth, files.llama, tmp_path / "w", eva_vit=files.eva_pth, options=OPTS,
                         prompt_template="###Human: {} ###Assistant: ")


RELEASE = Tiny(vision=1408, vision_heads=16, vision_ffn=6144, eva_blocks=40, keep_blocks=39, patch=14, image=224,
               qformer=768, qformer_heads=12, qformer_ffn=3072, qformer_layers=12, cross_freq=2, queries=32,
               bert_vocab=30523, bert_positions=512, llm=4096, meta=True)


@pytest.mark.parametrize("family", ["minigpt4", "bliva"])
def test_release_sized_layouts_map_completely_with_the_default_options(family):
    """EVA ViT-g (40 blocks in the file, 39 kept), the 12-layer Q-Former and a LLaMA-7B, all on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tvprompt.models.paper.arch import BlivaConfig, MiniGPT4Config
    from tvprompt.models.paper.convert import assemble_model, infer_qformer_config, infer_vision_config
    from tvprompt.models.paper.lavis_keys import map_state_dict

    bliva = family == "bliva"
    state = {**prefixed(eva_vit_state(RELEASE), "visual_encoder."), **qformer_state(RELEASE, text=bliva)}
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
    if bliva:
        state |= {"llm_proj.weight": meta(4096, 768), "llm_proj.bias": meta(4096),
                  "vision_project.weight": meta(4096, 1408), "vision_project.bias": meta(4096)}
        projections = {"llm_proj": "language_projection", "vision_project": "vision_project"}
    else:
        state |= {"llama_proj.weight": meta(4096, 768), "llama_proj.bias": meta(4096)}
        projections = {"llama_proj": "language_projection"}
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=32001 if bliva else 32000, tie_word_embeddings=False))
    # As the runners save them: the LLaMA rotary buffers (all three), the whole LLM (BLIVA).
    prefix = "llm_model." if bliva else "llama_model."
    state |= {k: v.to("meta") for k, v in rotary_buffers(prefix, 32, 128).items()}
    if bliva:
        state |= {prefix + k: meta(*v.shape) for k, v in llm.state_dict().items()}
        assert sum(k.startswith(prefix) for k in state) == 323
    opts = ConvertOptions()  # the released models' defaults
    vision, qformer = infer_vision_config(state, opts), infer_qformer_config(state, opts, text=bliva)
    assert (vision["num_hidden_layers"], vision["image_size"], vision["intermediate_size"]) == (39, 224, 6144)
    assert (qformer["num_hidden_layers"], qformer["cross_attention_frequency"]) == (12, 2)
    mapped, plan = map_state_dict(state, vision_layers=39, qformer_text=bliva, projections=projections)
    assert plan.unknown == [] and len(plan.mapped) + len(plan.dropped) == len(state)
    reasons = list(plan.dropped.values())
    assert reasons.count(ROTARY) == 32 and reasons.count(LLM_REASON) == (291 if bliva else 0)
    config_cls = BlivaConfig if bliva else MiniGPT4Config
    config = config_cls(vision_config=vision, qformer_config=qformer, text_config=llm.config.to_dict(),
                        num_query_tokens=32, image_token_index=0)
    model = assemble_model(config, family, mapped, llm, torch.float16, {})
    n = sum(p.numel() for p in model.parameters())
    assert 7.7e9 < n < 8.1e9, n  # LLaMA-7B 6.74B + ViT-g (39 blocks) 0.99B + Q-Former 0.1-0.2B


# ---- the files as the upstream runners save them ----------------------------------------------
# RunnerBase._save_checkpoint (LAVIS, MiniGPT-4, VPGTrans) deletes the parameters that do not require
# gradients but keeps every buffer, inside {"model": ..., "optimizer": ..., "config": ..., ...}. Their
# LLaMA code registers rotary_emb.inv_freq as a saved buffer; the BERT embeddings keep position_ids.
# BLIVA's runner saves every weight, the frozen ViT and LLM included.


@pytest.fixture(scope="module")
def saved(files):
    d = files.dir
    # MiniGPT-4 stage 2: ViT, ln_vision, Q-Former and queries frozen -> llama_proj + the buffers.
    stage2 = {**files.stage2, **qformer_position_ids(T), **rotary_buffers("llama_model.", 2, HEAD_DIM)}
    # VPGTrans: ViT frozen; ln_vision, Q-Former (text branch removed), queries, llama_proj trained.
    vpg = {**files.vpg, **rotary_buffers("llama_model.", 2, HEAD_DIM)}
    # BLIVA: everything, its ViT built with the kept blocks only, its LLM resized for [PAD].
    vit = {k: v for k, v in prefixed(files.eva, "visual_encoder.").items() if ".blocks.2." not in k}
    bliva = {**vit, **files.bliva, **saved_llm(files.llama, "llm_model.", extra_rows=1)}
    return argparse.Namespace(
        stage2=stage2, vpg=vpg, bliva=bliva,
        stage2_pth=save_pth(runner_checkpoint(stage2), d / "prerained_minigpt4_7b.pth"),
        vpg_pth=save_pth(runner_checkpoint(vpg), d / "vl-vicuna-saved.pth"),
        bliva_pth=save_pth(runner_checkpoint(bliva), d / "bliva_vicuna7b-saved.pth"),
    )


def _ids(tok, text: str) -> torch.Tensor:
    return torch.tensor(tok(text, add_special_tokens=False).input_ids)


def _minigpt4_ref_loss(llm, tok, image_tokens: torch.Tensor, prompt: str, answer: str) -> torch.Tensor:
    """MiniGPT-4's forward: <s> ###Human: <Img>[image]</Img> {prompt} ###Assistant: {answer}###."""
    emb = llm.get_input_embeddings()
    pieces = [emb(torch.tensor([[tok.bos_token_id]])), emb(_ids(tok, "###Human: <Img>")[None]), image_tokens,
              emb(_ids(tok, f"</Img> {prompt} ###Assistant: ")[None])]
    return _answer_loss(llm, pieces, _ids(tok, answer + "###"))


def test_runner_saved_minigpt4_stage2_with_buffers_converts_and_scores(files, saved, minigpt4, tmp_path, caplog):
    assert len(saved.stage2) == 2 + 1 + 2  # llama_proj.{weight,bias}, position_ids, one inv_freq per layer
    with caplog.at_level("INFO", logger="tvprompt.models.paper.convert"):
        out = convert_minigpt4(files.lavis_pth, saved.stage2_pth, files.llama, tmp_path / "m", options=OPTS)
    drops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropping ")]
    assert drops.count(f"dropping 2 keys: {ROTARY}") == 1 and len(drops) == len(set(drops))
    record = json.loads((out / "conversion.json").read_text())
    assert record["dropped_keys"][ROTARY] == 2
    assert record["dropped"]["llama_model.model.layers.1.self_attn.rotary_emb.inv_freq"] == ROTARY
    n_source = len(files.lavis.keys() | saved.stage2.keys())  # position_ids is in both files
    assert record["mapped_keys"] + sum(record["dropped_keys"].values()) == n_source

    adapter = load_adapter(f"hf:{out}", device="cpu")
    reference = load_adapter(f"hf:{minigpt4}", device="cpu")  # the bare state dict, checked against the forward
    ours, theirs = adapter.model.state_dict(), reference.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    pixels = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    image = ref_minigpt4_image_tokens({**files.lavis, **saved.stage2}, adapter.preprocess(pixels), T)
    choices = ["a red circle", "no", "yes"]
    scores = adapter.score_choices(pixels, PROMPTS, choices)
    llm, tok = _llama(files)
    with torch.no_grad():
        expected = torch.stack([torch.stack([-_minigpt4_ref_loss(llm, tok, image[b : b + 1], PROMPTS[b], c)
                                             for c in choices]) for b in range(2)])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


def test_runner_saved_vpgtrans_with_buffers_converts_and_scores(files, saved, tmp_path):
    out = convert_vpgtrans(saved.vpg_pth, files.llama, tmp_path / "v", eva_vit=files.eva_pth, options=OPTS)
    record = json.loads((out / "conversion.json").read_text())
    assert record["dropped_keys"][ROTARY] == 2 and record["dropped_keys"]["buffer; transformers rebuilds it"] == 1
    adapter = load_adapter(f"hf:{out}", device="cpu")
    pixels = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    sd = {**prefixed(files.eva, "visual_encoder."), **saved.vpg}
    image = ref_minigpt4_image_tokens(sd, adapter.preprocess(pixels), T)
    llm, tok = _llama(files)
    with torch.no_grad():
        for b in range(2):
            expected = _minigpt4_ref_loss(llm, tok, image[b : b + 1], PROMPTS[b], ANSWERS[b])
            torch.testing.assert_close(adapter.lm_loss(pixels[b : b + 1], [PROMPTS[b]], [ANSWERS[b]]), expected,
                                       atol=1e-5, rtol=1e-4)
        scores = adapter.score_choices(pixels[:1], PROMPTS[:1], ["no", "yes"])
        ref = torch.stack([-_minigpt4_ref_loss(llm, tok, image[:1], PROMPTS[0], c) for c in ["no", "yes"]])
        torch.testing.assert_close(scores[0], ref, atol=1e-5, rtol=1e-4)


def test_runner_saved_bliva_with_its_llm_converts_and_scores(files, saved, tmp_path, caplog):
    n_llm = sum(k.startswith("llm_model.") for k in saved.bliva)
    assert n_llm == 3 + 2 * 10  # embed, norm, lm_head + per layer 9 weights and inv_freq (323 for LLaMA-7B)
    with caplog.at_level("INFO", logger="tvprompt.models.paper.convert"):
        out = convert_bliva(saved.bliva_pth, files.llama, tmp_path / "b", qformer_tokenizer=files.bert, options=OPTS)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(f"dropping 21 keys: {LLM_REASON}") == 1
    assert messages.count(f"dropping 2 keys: {ROTARY}") == 1
    assert any(m.startswith("the LLM weights in the checkpoints equal those of") for m in messages)
    record = json.loads((out / "conversion.json").read_text())
    assert record["dropped_keys"][LLM_REASON] == 21 and record["dropped_keys"][ROTARY] == 2
    assert record["mapped_keys"] + sum(record["dropped_keys"].values()) == len(saved.bliva)

    adapter = load_adapter(f"hf:{out}", device="cpu")
    from transformers import BertTokenizer

    bert = BertTokenizer.from_pretrained(files.bert)
    bert.add_special_tokens({"bos_token": "[DEC]"})
    pixels = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    pixel_values = adapter.preprocess(pixels)
    llm, tok = _llama(files)
    n = llm.get_input_embeddings().weight.shape[0]
    llm.resize_token_embeddings(n + 1, mean_resizing=False)
    with torch.no_grad():  # BLIVA loads its [PAD] row from the file, with the rest of its LLM
        llm.get_input_embeddings().weight[n] = saved.bliva["llm_model.model.embed_tokens.weight"][n].float()
        llm.get_output_embeddings().weight[n] = saved.bliva["llm_model.lm_head.weight"][n].float()
    emb = llm.get_input_embeddings()
    eos = tok.convert_tokens_to_ids("</s>")
    choices = ["a red circle", "no"]
    scores = adapter.score_choices(pixels, PROMPTS, choices)
    with torch.no_grad():
        for b in range(2):
            text = bert([PROMPTS[b]], return_tensors="pt")
            image = ref_bliva_image_tokens(saved.bliva, pixel_values[b : b + 1], T, text.input_ids, text.attention_mask)
            prompt = torch.tensor([[eos] + tok(PROMPTS[b], add_special_tokens=False).input_ids])
            for c, choice in enumerate(choices):
                answer = torch.tensor(tok(choice, add_special_tokens=False).input_ids + [eos])
                expected = _answer_loss(llm, [image, emb(prompt)], answer)
                torch.testing.assert_close(scores[b, c], -expected, atol=1e-5, rtol=1e-4)


def test_a_checkpoint_llm_that_is_not_the_given_vicuna_is_refused(files, saved, tmp_path):
    other = dict(saved.bliva)
    other["llm_model.model.norm.weight"] = other["llm_model.model.norm.weight"] + 0.5  # another Vicuna
    path = save_pth({"model": other}, tmp_path / "bliva.pth")
    with pytest.raises(TvpError, match=r"not it \(1 of 21 weights differ: llm_model\.model\.norm\.weight "
                                       r"\(values differ\)\); pass Vicuna-7B v0") as err:
        convert_bliva(path, files.llama, tmp_path / "out", qformer_tokenizer=files.bert, options=OPTS)
    assert len(str(err.value).splitlines()) == 1 and not (tmp_path / "out").exists()
    other = {k: v for k, v in saved.bliva.items() if k != "llm_model.lm_head.weight"}
    other["llm_model.model.embed_tokens.weight"] = other["llm_model.model.embed_tokens.weight"][:-2]
    path = save_pth({"model": other}, tmp_path / "bliva2.pth")
    with pytest.raises(TvpError, match=r"embed_tokens\.weight \(\d+, 32\) vs \(\d+, 32\)"):
        convert_bliva(path, files.llama, tmp_path / "out", qformer_tokenizer=files.bert, options=OPTS)


def test_llm_keys_other_than_the_plain_llama_weights_are_still_refused(files, tmp_path):
    lora = "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    path = save_pth(runner_checkpoint({**files.stage2, lora: torch.zeros(4, T.llm)}), tmp_path / "s2.pth")
    with pytest.raises(TvpError, match=r"1 keys of the checkpoints cannot be mapped: llama_model\.base_model") as err:
        convert_minigpt4(files.lavis_pth, path, files.llama, tmp_path / "out", options=OPTS)
    assert len(str(err.value).splitlines()) == 1 and not (tmp_path / "out").exists()


def test_llama2_minigpt4_without_qformer_is_refused_in_one_line(files, tmp_path, capsys):
    """MiniGPT-4 on Llama-2: has_qformer False, llama_proj over 4 concatenated ViT patch features."""
    g = torch.Generator().manual_seed(6)
    stage2 = {"llama_proj.weight": torch.randn(T.llm, 4 * T.vision, generator=g), "llama_proj.bias": torch.zeros(T.llm),
              **rotary_buffers("llama_model.", 2, HEAD_DIM)}
    path = save_pth(runner_checkpoint(stage2), tmp_path / "pretrained_minigpt4_llama2_7b.pth")
    with pytest.raises(UsageError, match=r"pretrained_minigpt4_llama2_7b\.pth: llama_proj takes 128 inputs.*"
                                         r"Llama-2 MiniGPT-4 release.*does not support") as err:
        convert_minigpt4(files.lavis_pth, path, files.llama, tmp_path / "out", options=OPTS)
    assert len(str(err.value).splitlines()) == 1 and not (tmp_path / "out").exists()
    from tvprompt.cli import main

    capsys.readouterr()
    argv = ["convert", "minigpt4", "--lavis-ckpt", str(files.lavis_pth), "--stage2", str(path), "--llama",
            str(files.llama), "--output", str(tmp_path / "out"), "--vision-layers", "2", "--vision-heads", "4",
            "--qformer-heads", "4"]
    assert main(argv) == 2
    err_line = capsys.readouterr().err.strip()
    assert "Llama-2 MiniGPT-4" in err_line and len(err_line.splitlines()) == 1


def _slow_only_vicuna(files, path: Path) -> Path:
    """A Vicuna folder as FastChat's apply_delta writes it: no tokenizer.json, a SentencePiece tokenizer.model."""
    import shutil

    shutil.copytree(files.llama, path)
    (path / "tokenizer.json").unlink()
    (path / "tokenizer.model").write_bytes(b"\x0a\x05<unk>")  # not a real model: the dependency check comes first
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "LlamaTokenizer"
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_a_slow_llama_tokenizer_without_sentencepiece_names_the_extra(files, tmp_path, monkeypatch):
    llama = _slow_only_vicuna(files, tmp_path / "vicuna-7b-v0")
    monkeypatch.setattr(paper_convert, "missing_slow_tokenizer_deps", lambda: ["sentencepiece", "protobuf"])
    with pytest.raises(UsageError, match=r"vicuna-7b-v0: the tokenizer is a slow LLaMA one .*sentencepiece and "
                                         r"protobuf are not installed: pip install "
                                         r"'tvprompt\[slow-tokenizer\]'") as err:
        convert_minigpt4(files.lavis_pth, files.stage2_pth, llama, tmp_path / "out", options=OPTS)
    assert len(str(err.value).splitlines()) == 1 and not (tmp_path / "out").exists()
    monkeypatch.setattr(paper_convert, "missing_slow_tokenizer_deps", lambda: [])  # installed, file still broken
    with pytest.raises(TvpError, match="could not load the tokenizer") as err:
        convert_minigpt4(files.lavis_pth, files.stage2_pth, llama, tmp_path / "out", options=OPTS)
    assert "slow-tokenizer" not in str(err.value)


def test_missing_slow_tokenizer_deps_reports_what_is_not_importable(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "google.protobuf":
            raise ModuleNotFoundError("No module named 'google'")
        return None if name == "sentencepiece" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert paper_convert.missing_slow_tokenizer_deps() == ["sentencepiece", "protobuf"]


@pytest.mark.skipif(paper_convert.missing_slow_tokenizer_deps() != [],
                    reason="needs the slow-tokenizer extra (sentencepiece, protobuf)")
def test_a_vicuna_folder_with_only_the_slow_tokenizer_converts_with_the_extra(files, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    llama = slow_vicuna_dir(tmp_path / "vicuna-7b-v0", T)
    assert not (llama / "tokenizer.json").exists()
    out = convert_minigpt4(files.lavis_pth, files.stage2_pth, llama, tmp_path / "m", options=OPTS)
    assert (out / "tokenizer.json").is_file()  # the converted model no longer needs the extra
    adapter = load_adapter(f"hf:{out}", device="cpu")
    llm, tok = LlamaForCausalLM.from_pretrained(llama).eval(), AutoTokenizer.from_pretrained(llama)
    assert adapter.text_ids("What shape is this?") == tok("What shape is this?", add_special_tokens=False).input_ids
    assert adapter.image_token_id == tok.convert_tokens_to_ids("<unk>") == 0
    pixels = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(7))
    image = ref_minigpt4_image_tokens({**files.lavis, **files.stage2}, adapter.preprocess(pixels), T)
    with torch.no_grad():
        expected = _minigpt4_ref_loss(llm, tok, image, PROMPTS[0], ANSWERS[0])
    torch.testing.assert_close(adapter.lm_loss(pixels, PROMPTS[:1], ANSWERS[:1]), expected, atol=1e-5, rtol=1e-4)
