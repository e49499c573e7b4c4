"""reslab.patch on Hugging Face encoders built from configs (random init, nothing downloaded): ViT, DeiT,
DINOv2/v3, CLIP's two towers, SigLIP and ModernBERT.

Checked against the model's own computation: the unpatched outputs at init (schemes that start as residual),
padding masks reaching attention, training-mode dropout and stochastic depth drawn in the same order, and
gradients reaching the connection.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from conftest import perturb
from torch import nn

import reslab
from reslab.connections import REGISTRY, connection_names, resolve
from reslab.patch import is_patched, patched_connection

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

SIZES = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)
IMAGES = dict(image_size=16, patch_size=4, num_channels=3)
TEXT_IDS = dict(vocab_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# name -> (model class, config class, config values, input kind)
ENCODERS = {
    "vit": ("ViTModel", "ViTConfig", SIZES | IMAGES, "pixels"),
    "deit": ("DeiTModel", "DeiTConfig", SIZES | IMAGES, "pixels"),
    "dinov2": ("Dinov2Model", "Dinov2Config",
               dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, layerscale_value=0.5)
               | IMAGES, "pixels"),
    "dinov3": ("DINOv3ViTModel", "DINOv3ViTConfig", SIZES | IMAGES | dict(layerscale_value=0.5), "pixels"),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", SIZES | IMAGES, "pixels"),
    "clip_text": ("CLIPTextModel", "CLIPTextConfig", SIZES | TEXT_IDS | dict(max_position_embeddings=32), "tokens"),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", SIZES | IMAGES, "pixels"),
    "modernbert": ("ModernBertModel", "ModernBertConfig",
                   SIZES | TEXT_IDS | dict(cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=2,
                                           local_attention=8), "tokens"),
}
PIXELS = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
IDS = torch.randint(3, 40, (2, 12), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(2, 12, dtype=torch.long)
MASK[1, 8:] = 0  # the second sequence is padded: the mask must reach every attention call


def encoder(name: str, seed: int = 0, **overrides) -> nn.Module:
    model_cls, cfg_cls, values, _ = ENCODERS[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**(values | overrides))).eval()
    return perturb(model, seed=seed + 100, vectors_only=True)  # a swapped norm would pass at init


def inputs(name: str) -> dict:
    return dict(pixel_values=PIXELS) if ENCODERS[name][3] == "pixels" else dict(input_ids=IDS, attention_mask=MASK)


def schemes() -> list[str]:
    connection_names()
    return sorted(info.example for info in REGISTRY.values())


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("spec", schemes())
def test_patched_encoder_matches_the_model_and_trains(name, spec):
    model = encoder(name)
    with torch.no_grad():
        ref = model(**inputs(name)).last_hidden_state
    reslab.patch(model, spec)
    info, opts = resolve(spec)
    out = model(**inputs(name)).last_hidden_state
    if info.is_residual_at_init(opts):
        assert (out - ref).abs().max() <= 1e-5
    assert out.shape == ref.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    conn = patched_connection(model)
    grads = [p.grad for p in conn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not grads or any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("spec", ["laurel(rw, lr)", "denseformer"])
def test_clip_text_without_a_mask_stays_causal(spec):
    """With no padding mask CLIP's text tower relies on its causal flag alone (SDPA's is_causal), which the
    adapter must pass on: a later token never changes an earlier one's output."""
    model = encoder("clip_text")
    with torch.no_grad():
        ref = model(input_ids=IDS).last_hidden_state
    reslab.patch(model, spec)
    other = IDS.clone()
    other[:, 6:] = 3
    with torch.no_grad():
        out = model(input_ids=IDS).last_hidden_state
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(input_ids=other).last_hidden_state[:, :6], out[:, :6], atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("name", ["clip_text", "modernbert"])
def test_the_padding_mask_reaches_attention(name):
    """Patched or not, a padded position changes nothing the mask hides: the unpadded tokens' outputs do not
    depend on what the padded positions hold."""
    model = encoder(name)
    reslab.patch(model, "laurel(rw, lr)")
    other = IDS.clone()
    other[1, 8:] = 3  # different tokens where the mask is 0
    with torch.no_grad():
        a = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        b = model(input_ids=other, attention_mask=MASK).last_hidden_state
    torch.testing.assert_close(a[1, :8], b[1, :8], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_training_mode_dropout_and_drop_path_are_where_the_layer_puts_them(name):
    fields = getattr(transformers, ENCODERS[name][1])().to_dict()
    drops = {k: 0.1 for k, v in fields.items()
             if any(w in k for w in ("dropout", "drop_path", "_prob")) and isinstance(v, float)}
    model = encoder(name, **drops).train()
    torch.manual_seed(5)
    ref = model(**inputs(name)).last_hidden_state
    reslab.patch(model, "residual")
    torch.manual_seed(5)
    torch.testing.assert_close(model(**inputs(name)).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    torch.manual_seed(6)  # the masks matter: another seed gives other outputs
    assert (model(**inputs(name)).last_hidden_state - ref).abs().max() > 1e-3


def test_a_two_tower_model_asks_which_stack():
    cfg = transformers.CLIPConfig(text_config=ENCODERS["clip_text"][2], vision_config=ENCODERS["clip_vision"][2])
    model = transformers.CLIPModel(cfg).eval()
    with pytest.raises(ValueError, match="several layer stacks found .*pick one"):
        reslab.patch(model, "laurel(rw)")
    reslab.patch(model, "laurel(rw)", layers="vision_model.encoder.layers")
    with torch.no_grad():
        out = model(input_ids=IDS, pixel_values=PIXELS, attention_mask=MASK)
    assert torch.isfinite(out.logits_per_image).all()


# -- hf:vit / hf:deit / hf:dinov2: image classifiers as reslab model families ------------------------------------
@pytest.mark.parametrize("arch", ["vit", "deit", "dinov2"])
def test_hf_image_classifier_families(arch):
    from reslab.models import build_model

    info = {"input_shape": (1, 28, 28), "n_classes": 10}
    sizes = dict(patch_size=7, d_model=32, n_layer=2, n_head=2)
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = build_model(f"hf:{arch}", info, "residual", **sizes).eval()
    assert not is_patched(plain.hf)  # residual is the model as written
    torch.manual_seed(0)
    wired = build_model(f"hf:{arch}", info, "laurel(rw, lr)", **sizes).eval()
    assert patched_connection(wired.hf).n_blocks == 2  # both layers wired
    with torch.no_grad():
        out = wired(images)
        assert out.shape == (3, 10)
        torch.testing.assert_close(out, plain(images), atol=1e-5, rtol=1e-5)  # same init, residual at init
    with pytest.raises(ValueError, match="unknown option 'patch_sise'.*patch_size"):
        build_model(f"hf:{arch}", info, "residual", patch_sise=7)
    with pytest.raises(ValueError, match=f"model 'hf:{arch}' needs task_info\\['input_shape'\\]"):
        build_model(f"hf:{arch}", {"vocab_size": 10, "block_size": 8}, "residual")
    with pytest.raises(ValueError, match="option 'image_size' is set by the task's images"):
        build_model(f"hf:{arch}", info, "residual", image_size=32)
    with pytest.raises(ValueError, match="must be divisible by n_head"):
        build_model(f"hf:{arch}", info, "residual", d_model=30, n_head=4)
    gray = build_model(f"hf:{arch}", {"input_shape": (28, 28), "n_classes": 10}, "residual", **sizes)
    assert gray(images[:, 0]).shape == (3, 10)  # (H, W) images: one channel


# -- BERT-style post-norm encoders: each branch a block of its own, its LayerNorm after the scheme's add ----------
POST_NORM = {"bert": ("BertModel", "BertConfig"), "roberta": ("RobertaModel", "RobertaConfig"),
             "electra": ("ElectraModel", "ElectraConfig")}


def post_norm_encoder(name: str, **overrides) -> nn.Module:
    model_cls, cfg_cls = POST_NORM[name]
    values = SIZES | dict(vocab_size=40, pad_token_id=0, max_position_embeddings=40) | overrides
    if name == "electra":
        values["embedding_size"] = 16  # ELECTRA projects its embeddings to the stream: exercised too
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**values)).eval()
    return perturb(model, seed=100, vectors_only=True)  # the two LayerNorms of a layer must not be swappable


@pytest.mark.parametrize("name", sorted(POST_NORM))
@pytest.mark.parametrize("spec", schemes())
def test_post_norm_encoders_put_each_norm_after_the_schemes_add(name, spec):
    model = post_norm_encoder(name)
    with torch.no_grad():
        ref = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    info, opts = resolve(spec)
    try:
        reslab.patch(model, spec)
    except ValueError as e:  # several streams: no single one to normalise
        assert "normalises the stream after every add" in str(e) and info.name in (
            "attnres", "frac", "hyper", "mhc", "muddformer")
        return
    out = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    if info.is_residual_at_init(opts):
        assert (out - ref).abs().max() <= 1e-5
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in patched_connection(model).parameters())


@pytest.mark.parametrize("name", sorted(POST_NORM))
def test_post_norm_dropout_and_padding_as_the_layer_has_them(name):
    model = post_norm_encoder(name, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    torch.manual_seed(5)
    ref = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    reslab.patch(model, "residual")
    torch.manual_seed(5)
    torch.testing.assert_close(model(input_ids=IDS, attention_mask=MASK).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    model.eval()
    other = IDS.clone()
    other[1, 8:] = 3  # what the mask hides changes nothing
    with torch.no_grad():
        a = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        b = model(input_ids=other, attention_mask=MASK).last_hidden_state
    torch.testing.assert_close(a[1, :8], b[1, :8], atol=1e-5, rtol=1e-5)


def test_post_norm_decoders_with_cross_attention_are_refused():
    model = post_norm_encoder("bert", is_decoder=True, add_cross_attention=True)
    with pytest.raises(ValueError, match="has cross-attention"):
        reslab.patch(model, "laurel(rw)")


def test_post_norm_decoder_generation_save_load_checkpointing_and_chunking(tmp_path):
    from reslab.patch import from_pretrained

    chunked = post_norm_encoder("bert", chunk_size_feed_forward=4)  # the FFN over 4 positions at a time
    with torch.no_grad():
        ref = chunked(input_ids=IDS).last_hidden_state
        reslab.patch(chunked, "laurel(rw, lr)")
        torch.testing.assert_close(chunked(input_ids=IDS).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    cfg = transformers.BertConfig(**(SIZES | dict(vocab_size=40, pad_token_id=0, max_position_embeddings=40,
                                                  is_decoder=True)))
    torch.manual_seed(0)
    model = transformers.BertLMHeadModel(cfg).eval()
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
    reslab.patch(model, "laurel(rw, lr)")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, ref, atol=1e-5, rtol=1e-5)  # causal, as the layer's
        for p in patched_connection(model).parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        cached = model.generate(IDS[:1, :6], use_cache=True, **kw)
        full = model.generate(IDS[:1, :6], use_cache=False, **kw)
        assert torch.equal(cached.sequences, full.sequences)
        for a, b in zip(cached.logits, full.logits):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        moved = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    again = from_pretrained(transformers.BertLMHeadModel, tmp_path)
    with torch.no_grad():
        assert torch.equal(again(input_ids=IDS).logits, moved)
    with pytest.raises(ValueError, match="encoder_hidden_states passed to a BertLayer without cross-attention"):
        model(input_ids=IDS, encoder_hidden_states=torch.zeros(2, 3, 32))

    def grads(checkpointing: bool):
        m = post_norm_encoder("bert")
        reslab.patch(m, "ancre(tau=0.1)")
        m.train()
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(3)
        m(input_ids=IDS, attention_mask=MASK).last_hidden_state.square().mean().backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and any("reslab_patch" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def _attention_calls(model, inp: dict, post_norm: bool) -> list:
    """Every self-attention call of a forward: module, positional inputs, keywords and their None/bool values.
    (BERT's attention wrapper adds and normalises, so its inner self-attention is what both paths call.)"""
    ends = (".attention.self",) if post_norm else (".self_attn", ".attn", ".attention")
    calls, handles = [], []
    for name, m in model.named_modules():
        if name.endswith(ends) and ("layers." in name or "layer." in name):  # not SigLIP's pooling head
            def hook(module, args, kwargs, name=name):
                # bound to the signature: ViT's layer passes the mask positionally, the adapter by name
                bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
                bound = {k: v for k, v in bound.items() if k != "hidden_states"}
                bound.update(bound.pop("kwargs", {}))
                flags = tuple((k, v) for k, v in sorted(bound.items()) if isinstance(v, (bool, type(None))))
                calls.append((name, tuple(sorted(bound)), flags))
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(**inp, output_hidden_states=True)
    for h in handles:
        h.remove()
    return calls


@pytest.mark.parametrize("name", sorted(ENCODERS) + sorted(POST_NORM))
def test_encoder_attention_gets_the_arguments_the_layer_would_give_it(name):
    post_norm = name in POST_NORM
    model = post_norm_encoder(name) if post_norm else encoder(name)
    inp = dict(input_ids=IDS, attention_mask=MASK) if post_norm else inputs(name)
    before = _attention_calls(model, inp, post_norm)
    reslab.patch(model, "residual")
    assert _attention_calls(model, inp, post_norm) == before and len(before) == 3
