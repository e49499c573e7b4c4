"""reslab.patch on real transformers models built from configs (random init, nothing downloaded).

Every registered scheme is patched into every supported architecture and checked against the model's
own computation: the unpatched logits (schemes that start as residual), the model's KV-cache
generation against full forwards, gradient checkpointing against none, a state-dict round trip.
"""
from __future__ import annotations

import conftest
import pytest
import torch
from torch import nn

import reslab
from reslab.connections import REGISTRY, connection_names, resolve
from reslab.models.hf import ARCHS, HFCausalLM, default_fields, hf_config
from reslab.patch import is_patched, load_state_dict, patched_connection

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)
V, T = 40, 12


def schemes() -> list[str]:
    connection_names()
    return sorted(info.example for info in REGISTRY.values())


def tiny(arch: str, seed: int = 0, **overrides) -> nn.Module:
    """A small ``arch`` model whose norms and biases are moved off their init (at init every norm is the
    same map, so an adapter calling the wrong one would go unseen), with sliding windows shorter than the
    test sequences where the architecture has them (so a lost mask shows)."""
    torch.manual_seed(seed)
    sizes = dict(n_layer=3, d_model=32, n_head=4, d_ff=48) | overrides
    if "sliding_window" in default_fields(getattr(transformers, ARCHS[arch][0])):
        sizes.setdefault("sliding_window", 4)
    cfg = hf_config(arch, V, 32, **sizes)
    return conftest.perturb(getattr(transformers, ARCHS[arch][1])(cfg).eval(), seed=seed + 100, vectors_only=True)


def perturb(conn, seed=1, scale=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conn.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


IDS = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(2, T, dtype=torch.long)
MASK[1, :3] = 0  # the second sequence is left-padded: a mask the adapters must pass on to attention


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("spec", schemes())
def test_patched_logits_and_kv_cache_generation(arch, spec):
    model = tiny(arch)
    with torch.no_grad():
        ref = model(IDS, attention_mask=MASK).logits
    reslab.patch(model, spec)
    info, opts = resolve(spec)
    with torch.no_grad():
        out = model(IDS, attention_mask=MASK).logits
        if info.is_residual_at_init(opts):  # the unpatched model's logits at init
            assert (out - ref).abs().max() <= 1e-5
        else:
            assert out.shape == ref.shape and torch.isfinite(out).all()
        perturb(patched_connection(model))  # away from init, so a cache bug cannot hide behind identity maps
        kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        cached = model.generate(IDS[:1, :6], use_cache=True, **kw)
        full = model.generate(IDS[:1, :6], use_cache=False, **kw)  # every step a full forward of the sequence
        assert torch.equal(cached.sequences, full.sequences)
        for a, b in zip(cached.logits, full.logits):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


# Config variants the defaults above do not reach: Granite's branch scale is 1.0 by default (a dropped scale
# would pass), GPT-NeoX is parallel and StableLM sequential by default (each has the other form too).
VARIANTS = [("granite", {"residual_multiplier": 0.3}), ("granitemoe", {"residual_multiplier": 0.3}),
            ("gpt_neox", {"use_parallel_residual": False}), ("stablelm", {"use_parallel_residual": True})]


@pytest.mark.parametrize("arch,overrides", VARIANTS, ids=[f"{a}-{next(iter(o))}" for a, o in VARIANTS])
@pytest.mark.parametrize("spec", ["laurel(rw, lr)", "hyper(reduce=mean)", "denseformer"])
def test_config_variants_give_the_unpatched_logits(arch, overrides, spec):
    model = tiny(arch, **overrides)
    with torch.no_grad():
        ref = model(IDS, attention_mask=MASK).logits
    reslab.patch(model, spec)
    assert resolve(spec)[0].is_residual_at_init(resolve(spec)[1])
    with torch.no_grad():
        assert (model(IDS, attention_mask=MASK).logits - ref).abs().max() <= 1e-5


def _with_dropout(arch: str) -> nn.Module:
    """``tiny(arch)`` with every dropout of its config at 0.1."""
    fields = default_fields(getattr(transformers, ARCHS[arch][0]))
    drops = {k: 0.1 for k, v in fields.items() if ("dropout" in k or "pdrop" in k) and isinstance(v, float)}
    return tiny(arch, **drops).train()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_mode_dropout_is_where_the_layer_puts_it(arch):
    """Patched with ``residual``, a model in training mode draws the same dropout masks in the same order and
    applies them to the same tensors as the unpatched model: same seed, same logits."""
    model = _with_dropout(arch)  # every architecture here has one at least (attention's)
    torch.manual_seed(5)
    ref = model(IDS).logits
    reslab.patch(model, "residual")
    torch.manual_seed(5)
    torch.testing.assert_close(model(IDS).logits, ref, atol=1e-5, rtol=1e-5)
    torch.manual_seed(6)  # and the masks do matter: another seed gives other logits
    assert (model(IDS).logits - ref).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "granitemoe"])
def test_moe_router_logits_and_auxiliary_loss_survive_the_patch(arch):
    model = tiny(arch)
    ref = model(IDS, labels=IDS, output_router_logits=True)
    reslab.patch(model, "laurel(rw, lr)")
    out = model(IDS, labels=IDS, output_router_logits=True)
    assert len(out.router_logits) == len(ref.router_logits) == 3
    torch.testing.assert_close(out.aux_loss, ref.aux_loss)
    torch.testing.assert_close(out.loss, ref.loss)


@pytest.mark.parametrize("spec", ["residual", "ancre(tau=0.01)", "laurel(rw, lr, rank=4)", "denseformer", "rezero"])
def test_gradient_checkpointing_gives_the_same_gradients(spec):
    def grads(checkpointing: bool):
        model = tiny("llama")
        reslab.patch(model, spec)
        perturb(patched_connection(model))
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        calls = []
        hook = patched_connection(model).register_forward_pre_hook(lambda *a: calls.append(1))
        model(IDS, labels=IDS).loss.backward()
        hook.remove()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert any("reslab_patch" in n and g.abs().sum() > 0 for n, g in plain.items()) or spec == "residual"


def test_reentrant_checkpointing_with_a_tuple_state_is_refused():
    model = tiny("llama")
    reslab.patch(model, "ancre")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant': False"):
        model(IDS, labels=IDS).loss.backward()


@pytest.mark.parametrize("arch,spec", [("qwen3", "laurel(rw, lr, rank=4)"), ("qwen3", "ancre(tau=0.01)"),
                                       ("gpt_neox", "laurel(rw, lr, rank=4)")])  # gpt_neox: a parallel block
def test_torch_compile_fullgraph_of_a_patched_model(arch, spec):
    torch._dynamo.reset()
    model = tiny(arch)
    reslab.patch(model, spec)
    perturb(patched_connection(model))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(IDS, use_cache=False).logits, model(IDS, use_cache=False).logits)


def test_state_dict_round_trip_and_clear_errors():
    src = tiny("llama", seed=0)
    reslab.patch(src, "laurel(rw, lr, rank=4)")
    perturb(patched_connection(src))
    sd = src.state_dict()
    assert any(k.startswith("model.reslab_patch.connection.") for k in sd)
    dst = tiny("llama", seed=1)
    reslab.patch(dst, "laurel(rw, lr, rank=4)")
    load_state_dict(dst, sd)
    with torch.no_grad():
        torch.testing.assert_close(dst(IDS).logits, src(IDS).logits)
    unpatched = tiny("llama", seed=1)
    with pytest.raises(ValueError, match=r"call reslab.patch\(model, 'laurel\(rw, lr, rank=4\)'\) before loading"):
        load_state_dict(unpatched, sd)
    with pytest.raises(RuntimeError, match="reslab_patch"):  # plain torch refuses too, never a silent drop
        unpatched.load_state_dict(sd)
    other = tiny("llama")
    reslab.patch(other, "laurel(rw, lr, rank=2)")
    with pytest.raises(ValueError, match="patched with 'laurel\\(rw, lr, rank=4\\)'"):
        other.load_state_dict(sd, strict=False)


def test_unpatch_restores_the_model_and_param_groups_skip_decay():
    model = tiny("gpt2")
    with torch.no_grad():
        ref = model(IDS).logits
    reslab.patch(model, "ancre(tau=0.1)")
    conn = patched_connection(model)
    ids = {id(p) for p in conn.parameters()}
    assert ids and ids <= {id(p) for p in model.parameters()}  # registered: DDP/FSDP see them
    groups = {g["name"]: g for g in reslab.param_groups(model, weight_decay=0.1, lr=1e-3, connection_lr_mult=10)}
    assert {id(p) for p in groups["connection"]["params"]} == ids
    assert groups["connection"]["weight_decay"] == 0.0 and groups["connection"]["lr"] == pytest.approx(1e-2)
    assert not ids & {id(p) for p in groups["decay"]["params"]}
    reslab.unpatch(model)
    assert not is_patched(model) and "Reslab" not in type(model.transformer.h[0]).__name__
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, ref)


def test_bad_input_is_a_clear_error():
    model = tiny("llama")
    reslab.patch(model, "residual")
    with pytest.raises(ValueError, match="already patched; call reslab.unpatch"):
        reslab.patch(model, "ancre")
    with pytest.raises(ValueError, match="no ModuleList at 'model.blocks'.*'model.layers'"):
        reslab.patch(tiny("llama"), "ancre", layers="model.blocks")
    with pytest.raises(ValueError, match="unsupported architecture Sequential"):
        reslab.patch(nn.Sequential(nn.ModuleList([nn.Linear(4, 4)])), "ancre")
    with pytest.raises(ValueError, match="unknown connection 'ancer'"):
        reslab.patch(tiny("llama"), "ancer")
    with pytest.raises(ValueError, match="cross-attention"):
        reslab.patch(tiny("gpt2", add_cross_attention=True), "ancre")
    with pytest.raises(ValueError, match="not patched"):
        reslab.unpatch(tiny("llama"))


# -- the generic adapter: any ModuleList of pre-norm blocks ----------------------------------------------------
class PreNormBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm, self.ff = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x, scale=1.0):
        return x + scale * self.ff(self.norm(x))


class Encoder(nn.Module):
    def __init__(self, d=16, n=4):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(PreNormBlock(d) for _ in range(n))
        self.head = nn.Linear(d, 3)

    def forward(self, x, scale=1.0):
        for layer in self.encoder.layers:
            x = layer(x, scale=scale)
        return self.head(x)


def test_a_users_class_named_like_a_transformers_layer_gets_the_generic_adapter():
    class BertLayer(PreNormBlock):  # not transformers' post-norm BertLayer: matched by module, not by name
        pass

    model = nn.Sequential(nn.ModuleList([BertLayer(8) for _ in range(3)]))
    reslab.patch(model, "rezero", layers="0")
    assert patched_connection(model).n_blocks == 3


def test_a_branches_option_the_blocks_do_not_have_is_refused():
    with pytest.raises(ValueError, match="sets branches=3 but each block of LlamaDecoderLayer has 2"):
        reslab.patch(tiny("llama"), "skipinit(branches=3)")


def test_generic_adapter_on_a_modulelist_of_prenorm_blocks():
    torch.manual_seed(0)
    model, x = Encoder(), torch.randn(2, 5, 16)
    ref = model(x, scale=0.5)
    reslab.patch(model, "denseformer", layers="encoder.layers")
    torch.testing.assert_close(model(x, scale=0.5), ref, atol=1e-6, rtol=1e-5)  # starts as residual; kwargs pass
    reslab.unpatch(model)
    reslab.patch(model, "ancre(tau=0.01)", layers="encoder.layers")
    y = model(x)
    y.sum().backward()
    assert patched_connection(model).logits.grad.abs().sum() > 0
    bad = Encoder()
    bad.encoder.layers[1] = Narrowing()
    reslab.patch(bad, "laurel(rw)", layers="encoder.layers", dim=16)
    with pytest.raises(ValueError, match="keep the stream's shape"):
        bad(x)


class Narrowing(PreNormBlock):
    def __init__(self):
        super().__init__(16)

    def forward(self, x, scale=1.0):
        return super().forward(x, scale)[..., :8]


def test_hf_family_builds_patched_models():
    lm = HFCausalLM("qwen3", V, 32, "laurel(rw)", n_layer=2, d_model=32, n_head=4)
    assert is_patched(lm.hf) and lm(IDS).shape == (2, T, V)
    assert not is_patched(HFCausalLM("llama", V, 32, "residual", n_layer=2, d_model=32, n_head=4).hf)
    with pytest.raises(ValueError, match="unknown option 'n_layers'.*n_layer"):
        HFCausalLM("llama", V, 32, "residual", n_layers=2)
    with pytest.raises(ValueError, match="unknown Hugging Face architecture 'lama'; valid: llama"):
        hf_config("lama", V, 32)


def test_hf_config_small_defaults_never_override_what_the_user_gives():
    assert hf_config("qwen3_moe", V, 32).num_experts == 4  # not the released 128
    assert hf_config("qwen3_moe", V, 32, num_experts=8).num_experts == 8  # an alias of num_local_experts
    assert hf_config("qwen3_moe", V, 32, num_local_experts=8).num_experts == 8
    one = hf_config("mixtral", V, 32, num_local_experts=1)
    assert one.num_experts_per_tok == 1  # top-2 of one expert would not run
    ds = hf_config("deepseek_v3", V, 32, qk_rope_head_dim=4)
    assert ds.head_dim == 4  # the rotary tables follow the rope part of the head
    lm = HFCausalLM("deepseek_v3", V, 32, "residual", n_layer=2, d_model=32, n_head=4, qk_rope_head_dim=4)
    assert lm(IDS).shape == (2, T, V)


# -- the value residual (ResFormer) on HF decoders ---------------------------------------------------------------
def test_value_residual_mixes_first_layer_values_and_keeps_the_cache_exact():
    model = tiny("qwen3")
    with torch.no_grad():
        ref = model(IDS).logits
    reslab.patch(model, "residual", value_residual=True, value_residual_init=0.0)
    with torch.no_grad():  # lambda = 0: the model as it was
        torch.testing.assert_close(model(IDS).logits, ref, atol=1e-6, rtol=1e-6)
    reslab.unpatch(model)
    reslab.patch(model, "laurel(rw)", value_residual=True)
    vr = model.model.reslab_patch.value_residual
    assert vr.value_lambda.shape == (2,) and torch.all(vr.value_lambda == 0.5)
    # by hand: layer 1's values are the average of its own and layer 0's
    seen = {}
    hooks = [layer.self_attn.v_proj.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0], o)))
             for k, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        out = model(IDS).logits
    for h in hooks:
        h.remove()
    x1, mixed1 = seen[1]
    v1_own = torch.nn.functional.linear(x1, model.model.layers[1].self_attn.v_proj.weight)
    torch.testing.assert_close(mixed1, 0.5 * v1_own + 0.5 * seen[0][1])
    assert (out - ref).abs().max() > 1e-3
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        cached, full = (model.generate(IDS[:1, :6], use_cache=c, **kw) for c in (True, False))
    assert torch.equal(cached.sequences, full.sequences)
    for a, b in zip(cached.logits, full.logits):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    model.train()
    model(IDS, labels=IDS).loss.backward()
    assert vr.value_lambda.grad.abs().sum() > 0
    reslab.unpatch(model)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(IDS).logits, ref)
    with pytest.raises(ValueError, match="value_residual needs attention layers with a v_proj"):
        reslab.patch(tiny("gpt2"), "residual", value_residual=True)


def test_hf_moe_trains_with_its_router_loss_when_the_config_asks():
    lm = HFCausalLM("mixtral", V, 32, "laurel(rw)", n_layer=2, d_model=32, n_head=4, output_router_logits=True)
    x, y = IDS[:, :-1], IDS[:, 1:]
    torch.manual_seed(0)
    lm.train()
    loss, bits = lm.training_loss(x, y)
    logits, aux = lm(x, with_router_loss=True)
    ce = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    assert lm.router_loss_coef == lm.hf.config.router_aux_loss_coef > 0 and aux > 0
    torch.testing.assert_close(loss, ce + lm.router_loss_coef * aux)
    torch.testing.assert_close(bits, ce.detach() / torch.log(torch.tensor(2.0)))
    lm.eval()  # evaluation scores cross-entropy alone
    torch.testing.assert_close(lm.training_loss(x, y)[0], ce)
    plain = HFCausalLM("mixtral", V, 32, "residual", n_layer=2, d_model=32, n_head=4)  # the config's default: off
    assert plain.router_loss_coef == 0.0
    torch.testing.assert_close(plain.train().training_loss(x, y)[0],
                               nn.functional.cross_entropy(plain(x).reshape(-1, V), y.reshape(-1)))


def test_the_trainer_scores_a_compiled_hf_lm_through_its_objective():
    """The Trainer passes the compiled module as ``call`` (a compiled module has no truth value)."""
    from reslab.train import _loss, loss_and_metric

    torch._dynamo.reset()
    lm = HFCausalLM("mixtral", V, 32, "laurel(rw)", n_layer=2, d_model=32, n_head=4, output_router_logits=True)
    x, y = IDS[:, :-1], IDS[:, 1:]
    lm.train()
    torch.testing.assert_close(_loss(torch.compile(lm, backend="eager"), lm, "lm", x, y)[0], lm.training_loss(x, y)[0])
    plain = HFCausalLM("llama", V, 32, "laurel(rw)", n_layer=2, d_model=32, n_head=4).train()
    ours, theirs = plain.training_loss(x, y), loss_and_metric("lm", plain(x), y)  # as before the hook: bit for bit
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    with pytest.raises(ValueError, match="no router load-balancing loss in transformers"):
        HFCausalLM("deepseek_v3", V, 32, n_layer=2, d_model=32, n_head=4, output_router_logits=True)


def test_layers_whose_adds_reslab_cannot_take_over_are_refused_even_by_path():
    bert = transformers.DistilBertModel(transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                                                      vocab_size=V))
    for kw in ({}, {"layers": "transformer.layer"}):  # the generic adapter would run, and compute something else
        with pytest.raises(ValueError, match=r"DistilBertModel is not supported \(TransformerBlock at "
                                             r"'transformer.layer'\): post-norm layers"):
            reslab.patch(bert, "laurel(rw)", **kw)
    v4 = transformers.DeepseekV4ForCausalLM(transformers.DeepseekV4Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=V, intermediate_size=48,
        moe_intermediate_size=48, n_routed_experts=4, num_experts_per_tok=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None))
    with pytest.raises(ValueError, match="carry their own manifold-constrained hyper-connections"):
        reslab.patch(v4, "residual")
    assert not is_patched(bert) and not is_patched(v4)


@pytest.mark.parametrize("arch,spec,vr", [("qwen3", "laurel(rw, lr, rank=4)", True), ("gpt2", "hyper(n=2)", False)])
def test_save_pretrained_and_from_pretrained_round_trip(tmp_path, arch, spec, vr):
    import warnings

    from reslab.patch import from_pretrained

    model = tiny(arch)
    reslab.patch(model, spec, value_residual=vr)
    perturb(patched_connection(model))
    with torch.no_grad():
        ref = model(IDS, attention_mask=MASK).logits
    model.save_pretrained(tmp_path)  # safetensors: the holder's record is a tensor, not a dict
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing but the connection's own weights was left out and put back
        again = from_pretrained(transformers.AutoModelForCausalLM, tmp_path)
    assert is_patched(again) and patched_connection(again).spec == patched_connection(model).spec
    with torch.no_grad():
        torch.testing.assert_close(again(IDS, attention_mask=MASK).logits, ref, atol=0, rtol=0)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # transformers alone: not patched
    assert not is_patched(plain)
    reslab.unpatch(model)
    assert not hasattr(model.config, "reslab_patch")  # unpatch forgets the record too
    model.save_pretrained(tmp_path / "unpatched")
    with pytest.raises(ValueError, match="holds no patched model"):
        from_pretrained(transformers.AutoModelForCausalLM, tmp_path / "unpatched")


def test_checkpoints_saved_with_the_older_dict_record_still_load():
    src = tiny("llama")
    reslab.patch(src, "laurel(rw)")
    sd = src.state_dict()
    key = next(k for k in sd if k.endswith("reslab_patch._extra_state"))
    sd[key] = {"spec": "laurel(rw)", "layers": None}  # how the holder recorded itself before safetensors support
    dst = tiny("llama", seed=1)
    reslab.patch(dst, "laurel(rw)")
    load_state_dict(dst, sd)
    with pytest.raises(ValueError, match=r"call reslab.patch\(model, 'laurel\(rw\)'\) before loading"):
        load_state_dict(tiny("llama"), sd)


def test_from_pretrained_keeps_dtypes_and_says_what_is_wrong(tmp_path):
    import numpy as np

    from reslab.patch import from_pretrained

    model = tiny("llama")
    reslab.patch(model, "laurel(rw, lr)", rank=np.int64(4))  # keyword options live in the canonical spec
    perturb(patched_connection(model))
    model.to(torch.bfloat16)
    with torch.no_grad():
        ref = model(IDS).logits
    model.save_pretrained(tmp_path / "bf16", max_shard_size="20KB")  # several shards
    assert len(list((tmp_path / "bf16").glob("*.safetensors"))) > 1
    again = from_pretrained(transformers.AutoModelForCausalLM, tmp_path / "bf16")
    assert patched_connection(again).spec == "laurel(rw, lr, rank=4)"
    assert {p.dtype for p in patched_connection(again).parameters()} == {torch.bfloat16}
    for a, b in zip(patched_connection(again).parameters(), patched_connection(model).parameters()):
        assert torch.equal(a, b)  # the connection as saved, bit for bit
    with torch.no_grad():  # (transformers' own bfloat16 round trip moves logits by ~2e-3: rotary tables reload in fp32)
        assert (again(IDS).logits.float() - ref.float()).abs().max() < 1e-2
    as32 = from_pretrained(transformers.AutoModelForCausalLM, tmp_path / "bf16", dtype=torch.float32)
    assert {p.dtype for p in as32.parameters()} == {torch.float32}
    stale = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")  # unpatched, config still records
    stale.save_pretrained(tmp_path / "stale")
    with pytest.raises(ValueError, match="records a patch .* but its weights hold no connection"):
        from_pretrained(transformers.AutoModelForCausalLM, tmp_path / "stale")
    with pytest.raises(ValueError, match="is not a local folder"):
        from_pretrained(transformers.AutoModelForCausalLM, "someone/some-model")
    with pytest.raises(ValueError, match="not where the model patched with .* keeps them .*; load it with the class"):
        with pytest.warns(UserWarning, match="unexpected_keys: \\['lm_head.weight'\\]"):  # what transformers left out
            from_pretrained(transformers.AutoModel, tmp_path / "bf16")


def _attention_calls(model) -> list:
    """Every attention call of a forward: which module, how many positional inputs, the keywords and their
    None/bool values."""
    calls, handles = [], []
    for name, m in model.named_modules():
        if (".layers." in name and name.endswith((".self_attn", ".attention", ".attn"))) or (
                ".h." in name and name.endswith(".attn")):
            def hook(module, args, kwargs, name=name):
                flags = tuple((k, v) for k, v in sorted(kwargs.items()) if isinstance(v, (bool, type(None))))
                calls.append((name, len(args) + ("hidden_states" in kwargs),
                              tuple(sorted(set(kwargs) - {"hidden_states"})), flags))
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(IDS, attention_mask=MASK, output_hidden_states=True, output_attentions=False)
    for h in handles:
        h.remove()
    return calls


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_attention_gets_the_arguments_the_layer_would_give_it(arch):
    """Patched, every attention module is called with the same keywords (and flag values) as unpatched: what the
    model's loop passes, filtered as the layer filters it, plus the layer's defaults for what the loop leaves out."""
    model = tiny(arch)
    before = _attention_calls(model)
    reslab.patch(model, "residual")
    assert _attention_calls(model) == before and len(before) == 3
