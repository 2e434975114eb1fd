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
    qformer_state,
    ref_bliva_image_tokens,
    ref_minigpt4_image_tokens,
    save_pth,
    tiny_llama_dir,
)
from tvprompt.errors import TvpError, UsageError
from tvprompt.models.paper.convert import ConvertOptions, convert_bliva, convert_minigpt4, convert_vpgtrans
from tvprompt.models.paper.lavis_keys import map_lavis_key
from tvprompt.models.registry import load_adapter

T = Tiny()
OPTS = ConvertOptions(vision_layers=T.keep_blocks, vision_heads=T.vision_heads, qformer_heads=T.qformer_heads,
                      dtype="float32")
SRC = str(Path(__file__).resolve().parents[1] / "src")
PROMPTS = ["What shape is this?", "Is there a red circle?"]
ANSWERS = ["a red circle", "no"]


def _proj(name: str, out: int, inp: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{name}.weight": torch.randn(out, inp, generator=g) * 0.3, f"{name}.bias": torch.randn(out, generator=g) * 0.1}


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
    ref = ref_minigpt4_image_tokens({**prefixed(files.eva, "visual_encoder."), **files.vpg}, adapter.preprocess(pixels), T)
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
    with pytest.raises(TvpError, match=r"no source for 1 weights.*qformer\.encoder\.layer\.1\.output_query\.dense\.weight"):
        convert_minigpt4(path, files.stage2_pth, files.llama, tmp_path / "out", options=OPTS)


def test_stage2_without_llama_proj_is_refused(files, tmp_path):
    path = save_pth({"model": {"llama_proj.weight": files.stage2["llama_proj.weight"]}}, tmp_path / "s2.pth")
    with pytest.raises(TvpError, match="llama_proj.bias"):
        convert_minigpt4(files.lavis_pth, path, files.llama, tmp_path / "out", options=OPTS)


def test_shape_mismatch_names_the_weight_and_file(files, tmp_path):
    path = save_pth({"model": {**files.stage2, "llama_proj.weight": torch.zeros(T.llm, T.qformer + 1)}}, tmp_path / "s.pth")
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
    assert map_lavis_key(key, vision_layers=39, qformer_text=False, projections={"llama_proj": "language_projection"}) == expected


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
    opts = ConvertOptions()  # the released models' defaults
    vision, qformer = infer_vision_config(state, opts), infer_qformer_config(state, opts, text=bliva)
    assert (vision["num_hidden_layers"], vision["image_size"], vision["intermediate_size"]) == (39, 224, 6144)
    assert (qformer["num_hidden_layers"], qformer["cross_attention_frequency"]) == (12, 2)
    mapped, plan = map_state_dict(state, vision_layers=39, qformer_text=bliva, projections=projections)
    assert plan.unknown == [] and len(plan.mapped) + len(plan.dropped) == len(state)
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=32001 if bliva else 32000, tie_word_embeddings=False))
    config_cls = BlivaConfig if bliva else MiniGPT4Config
    config = config_cls(vision_config=vision, qformer_config=qformer, text_config=llm.config.to_dict(),
                        num_query_tokens=32, image_token_index=0)
    model = assemble_model(config, family, mapped, llm, torch.float16, {})
    n = sum(p.numel() for p in model.parameters())
    assert 7.7e9 < n < 8.1e9, n  # LLaMA-7B 6.74B + ViT-g (39 blocks) 0.99B + Q-Former 0.1-0.2B
