"""Properties of tvlm.py on tiny CPU configs: shapes, attention maths, masks, invariances, checkpoints, answer()."""
import dataclasses
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import tvlm
from tvlm import (CANT, TVLM, Attention, Muon, RMSNorm, TVLMConfig, Tokenizer, answer_loss, answer_targets,
                  apply_rope, configure_optimizers, get_lr, load_checkpoint, load_image, orthogonalize, pick_device,
                  mirror_tables, prefix_lm_mask, rope_cache)  # conftest.py: root on sys.path

CORPUS = ["Is the traffic light red?", "How many cars are on the left?", "Is there a pedestrian?",
          "What's the weather like?", "Is the road wet, or dry?"]
TOK = Tokenizer.build(CORPUS)
ANSWERS = ['yes', 'no', '0', '1', '2']
FUSIONS = ['cross', 'prefix', 'both']
# every way the decoder can be wired: three fusions, learned positions, and the blind ablation (fusion='none')
VARIANTS = [dict(fusion='cross'), dict(fusion='prefix'), dict(fusion='both'),
            dict(fusion='both', pos='learned'), dict(fusion='prefix', pos='learned'), dict(fusion='none')]
VARIANT_IDS = ['cross', 'prefix', 'both', 'both-learned', 'prefix-learned', 'blind']


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core machine their spinning tripled the run time."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(**kw):
    base = dict(img_h=32, img_w=48, patch=8, vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64,
                dec_width=32, dec_depth=2, dec_heads=4, dec_kv_heads=2, dec_mlp=64,
                vocab_size=len(TOK), max_q_len=12, n_answers=len(ANSWERS))
    return TVLMConfig(**{**base, **kw})


def make_model(seed=0, random_head=True, **kw):
    """A tiny model in eval mode; the zero-initialised head is randomised so logits carry information."""
    torch.manual_seed(seed)
    model = TVLM(tiny_cfg(**kw), TOK, ANSWERS).eval()
    if random_head:
        nn.init.normal_(model.head.weight, std=1.0)
    return model


def images(n, seed=1, h=32, w=48):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)  # (N, Hi, Wi, 3)


def encode(questions, max_len=12):
    return torch.from_numpy(np.stack([TOK.encode(q, max_len)[0] for q in questions]))  # (B, T)


def image_inputs(model, imgs):
    """The decoder's image inputs as TVLM.forward builds them: (prefix (B, P, C) or None, ctx (N, P, C) or None)."""
    cfg = model.cfg
    if cfg.fusion == 'none':
        return None, None
    img = model.proj(model.vit(imgs))                                             # (N, P, C)
    return (img if cfg.fusion in ('prefix', 'both') else None), (img if cfg.fusion in ('cross', 'both') else None)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

# -----------------------------------------------------------------------------
# Seed milestones


def test_vit_output_shape():
    """The vision encoder maps uint8 (N, Hi, Wi, 3) to (N, P, vit_width) with P = (Hi/p) * (Wi/p)."""
    model = make_model()
    x = model.vit(images(3))
    assert x.shape == (3, (32 // 8) * (48 // 8), 32)
    assert model.cfg.n_patches == 24 and torch.isfinite(x).all()


def test_conv_stem_gives_the_same_patch_grid():
    """A stem of stride-2 convs (one per halving of the patch size) makes the patchify conv's token grid."""
    model = make_model(stem=(8, 16, 24))
    x = model.vit(images(3))
    assert x.shape == (3, (32 // 8) * (48 // 8), 32) and torch.isfinite(x).all()


def test_patch_loss_is_binary_cross_entropy_of_the_patch_head():
    """With patch_targets the loss adds patch_weight x the patch head's BCE (summed over a patch's 3 labels,
    averaged over patches), and its gradient reaches the vision encoder."""
    model = make_model(n_patch_labels=3, patch_weight=0.5).train()
    q, a = encode(CORPUS[:4]), torch.tensor([0, 1, 2, 3])
    img, idx = images(2), torch.tensor([0, 0, 1, 1])
    targets = (torch.rand(2, 4, 6, 3, generator=torch.Generator().manual_seed(0)) < 0.3).float()  # (N, Hi/p, Wi/p, K)
    logits, answer_only = model(img, q, a, image_idx=idx)
    _, both = model(img, q, a, image_idx=idx, patch_targets=targets)
    by_hand = 3 * F.binary_cross_entropy_with_logits(model.patch_head(model.vit(img)), targets.view(2, 24, 3))
    assert both.item() == pytest.approx(answer_only.item() + 0.5 * by_hand.item(), rel=1e-6)
    (both - answer_only).backward()
    assert model.vit.patch.weight.grad.abs().sum() > 0
    assert make_model(n_patch_labels=3, fusion='none').patch_head is None


def test_patch_loss_weighs_each_label_and_skips_unknown_targets():
    """patch_label_weights scale each label's BCE; a target < 0 (not known) adds nothing and pulls on nothing."""
    model = make_model(n_patch_labels=3, patch_weight=1.0, patch_label_weights=(1.0, 1.0, 0.25)).train()
    q, a, img, idx = encode(CORPUS[:2]), torch.tensor([0, 1]), images(1), torch.tensor([0, 0])
    targets = (torch.rand(1, 4, 6, 3, generator=torch.Generator().manual_seed(0)) < 0.3).float()   # (N, Hi/p, Wi/p, K)
    targets[..., 2] = -1                                                     # label 2 not known anywhere
    targets[0, 0, 0, 2] = 1                                                  # ... but on one patch
    _, answer_only = model(img, q, a, image_idx=idx)
    _, both = model(img, q, a, image_idx=idx, patch_targets=targets)
    bce = F.binary_cross_entropy_with_logits(model.patch_head(model.vit(img)), targets.clamp_min(0).view(1, 24, 3),
                                             reduction='none')               # (1, 24, 3)
    by_hand = (bce[..., :2].sum() + 0.25 * bce[0, 0, 2]) / 24
    assert both.item() == pytest.approx(answer_only.item() + by_hand.item(), rel=1e-6)
    with pytest.raises(ValueError, match='2 patch_label_weights for 3 patch labels'):
        make_model(n_patch_labels=3, patch_label_weights=(1.0, 1.0))


def test_look_loss_is_cross_entropy_from_the_targets_to_the_summary_attention():
    """With look_targets the loss adds look_weight x the cross-entropy from each question's target (B, P) to its
    summary token's cross-attention, heads averaged, averaged over layers and over the questions that have a target;
    its gradient reaches the queries of cross-attention. Prefix fusion has no cross-attention to teach: refused."""
    model = make_model(look_weight=0.5).train()
    q, a = encode(CORPUS[:4]), torch.tensor([0, 1, 2, 3])
    img, idx = images(2), torch.tensor([0, 0, 1, 1])
    looks = torch.zeros(4, 4, 6)                                                  # (B, Hi/p, Wi/p)
    looks[0, 1, 2] = looks[0, 3, 5] = 0.5
    looks[2, 0, 0] = 1.0                                                          # questions 1 and 3 have none
    _, answer_only = model(img, q, a, image_idx=idx)
    _, both = model(img, q, a, image_idx=idx, look_targets=looks)
    out = {}
    model(img, q, image_idx=idx, out=out)
    summary, rows = (q != 0).sum(1) - 1, torch.tensor([0, 2])
    by_hand = sum(-(looks[rows].flatten(1) * m[rows, :, summary[rows]].mean(1).log()).sum(1).mean()
                  for m in out['cross_attn']) / len(out['cross_attn'])
    assert both.item() == pytest.approx(answer_only.item() + 0.5 * by_hand.item(), rel=1e-5)
    (both - answer_only).backward()
    assert all(b.cross.wq.weight.grad.abs().sum() > 0 for b in model.dec.blocks)
    with pytest.raises(ValueError, match='look_weight teaches cross-attention'):
        tiny_cfg(fusion='prefix', look_weight=0.5)


def test_forward_returns_the_training_loss():
    """forward's loss is the one train.py optimises: answer_loss with the config's smoothing, per-answer weights and
    focal term, so no script rebuilds it (the bug this guards against: train.py and bench.py each had their own)."""
    weights = tuple(float(w) for w in range(1, len(ANSWERS) + 1))
    model = make_model(label_smoothing=0.1, focal_gamma=2.0, answer_weights=weights)
    q, a = encode(CORPUS[:4]), torch.tensor([0, 1, 2, 3])
    logits, loss = model(images(4), q, a)
    torch.testing.assert_close(loss, answer_loss(logits, a, 0.1, torch.tensor(weights), 2.0))
    assert loss != answer_loss(logits, a)
    with pytest.raises(ValueError, match='answer_weights'):
        tiny_cfg(answer_weights=(1.0, 2.0))


def test_the_image_moves_the_answer_at_initialisation():
    """At init the image must already reach the logits: it passes three matrices in a row (proj, cross k/v, out),
    and with GPT-2's fixed std 0.02 at these widths it arrived ~100x weaker than the question and never trained."""
    model = make_model(random_head=False)
    nn.init.normal_(model.head.weight, std=model.cfg.dec_width ** -0.5)   # a head of the fan-in scale, as trained
    q = encode(CORPUS[:1] * 2)
    logits, _ = model(images(2), q, image_idx=torch.tensor([0, 1]))
    spread = (logits[0] - logits[1]).abs().mean() / logits.abs().mean()
    assert spread > 0.02, f"two images change the logits by only {spread:.4f} of their size"


@pytest.mark.parametrize('kw', VARIANTS, ids=VARIANT_IDS)
def test_generate_emits_tokens_untrained(kw):
    """An untrained decoder continues a prompt: the prompt is kept and new ids are valid vocabulary ids. The prompt
    stops before <eos>: an untrained tied head echoes its input, and an echoed <eos> would end generation at once."""
    model = make_model(**kw)
    prompt = encode(["is the light red?"] * 2, 7)[:, :6]                         # 6 real tokens, no pads, no <eos>
    assert (prompt != 0).all()
    out = model.generate(images(2), prompt, max_new_tokens=4, temperature=0)
    assert out.shape == (2, 10) and out.dtype == torch.int64
    assert torch.equal(out[:, :6], prompt)
    assert ((out >= 0) & (out < len(TOK))).all()
    assert torch.equal(out, model.generate(images(2), prompt, max_new_tokens=4, temperature=0))  # greedy
    sampled = model.generate(images(2), prompt, max_new_tokens=4, temperature=1.0)
    assert ((sampled >= 0) & (sampled < len(TOK))).all()


def test_generate_and_answer_refuse_bad_calls_without_asserts():
    """Mistakes a caller can make are ValueError / RuntimeError, not asserts, which python -O would drop."""
    model = make_model()
    prompt = encode(["is the light red?"] * 2, 7)[:, :6]                         # (2, 6), no pads
    for kw, words in [(dict(max_new_tokens=-1), "max_new_tokens=-1 and temperature=0 must be >= 0"),
                      (dict(max_new_tokens=1, temperature=-1.0), "temperature=-1.0 must be >= 0"),
                      (dict(max_new_tokens=model.cfg.max_text_len), "prompt \\+ new tokens exceed")]:
        with pytest.raises(ValueError, match=words):
            model.generate(images(2), prompt, **{'temperature': 0, **kw})
    with pytest.raises(ValueError, match="unpadded prompts"):
        model.generate(images(2), encode(["is the light red?", "is there a pedestrian?"], 12), max_new_tokens=1)
    with pytest.raises(ValueError, match="must be in \\[1, "):
        model.generate(images(2), prompt + model.cfg.vocab_size, max_new_tokens=1)
    with pytest.raises(RuntimeError, match=r"answer\(\) needs a model from from_checkpoint\(\)"):
        TVLM(tiny_cfg()).eval().answer(images(1)[0].numpy(), "is the light red?")
    with pytest.raises(ValueError, match="not a tvlm tokenizer"):
        Tokenizer.from_dict({'itos': ['a', 'b', 'c', 'd', 'e']})


def test_autocast_in_bf16_on_a_cpu_takes_sdpas_math_kernel():
    """float32 runs as is; bf16 on a CPU autocasts and turns SDPA's flash kernel off (in bf16 the slow one there)."""
    was = torch.backends.cuda.flash_sdp_enabled()
    try:
        with tvlm.autocast('cpu', 'float32'):
            assert not torch.is_autocast_enabled('cpu') and torch.backends.cuda.flash_sdp_enabled() == was
        with tvlm.autocast('cpu', 'bfloat16'):
            assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16
            assert not torch.backends.cuda.flash_sdp_enabled()
    finally:
        torch.backends.cuda.enable_flash_sdp(was)


def test_auto_precision_is_float32_on_a_cpu_and_bf16_on_a_gpu_that_has_it(monkeypatch):
    """--dtype=auto, one rule for train.py and bench.py: bf16 is opt-in on a CPU (README's trial), the default on CUDA."""
    assert tvlm.fast_dtype('cpu') == 'float32' and tvlm.fast_dtype('mps') == 'float32'
    for has_bf16, want in [(True, 'bfloat16'), (False, 'float32')]:
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: has_bf16)
        assert tvlm.fast_dtype('cuda') == want


@pytest.mark.parametrize('kw', VARIANTS + [dict(label_smoothing=0.1)], ids=VARIANT_IDS + ['smoothing'])
def test_initial_loss_is_ln_n_answers(kw):
    """The zero-initialised head gives all answers equal logits, so the first loss is ln(A) exactly."""
    model = make_model(random_head=False, **kw)
    logits, loss = model(images(3), encode(CORPUS[:3]), targets=torch.tensor([0, 3, 4]))
    assert logits.shape == (3, len(ANSWERS))
    assert torch.equal(logits, torch.zeros_like(logits))
    assert loss.shape == () and loss.item() == pytest.approx(math.log(len(ANSWERS)), abs=1e-6)
    loss.backward()
    assert model.head.weight.grad.abs().sum() > 0          # the head learns from the first step
    assert model(images(3), encode(CORPUS[:3]))[1] is None

# -----------------------------------------------------------------------------
# Building blocks: RoPE, attention (MHA, GQA), RMSNorm


def test_rope_preserves_norms():
    """RoPE rotates pairs of features, so every (head, position) vector keeps its length."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 20, 16)                                                 # (B, H, T, D)
    cos, sin = rope_cache(20, 16)
    y = apply_rope(x, cos, sin)
    close(y.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:])                            # it does rotate
    close(y[:, :, 0], x[:, :, 0])                                                  # position 0 is the identity


def test_rope_depends_only_on_relative_position():
    """<rope(q, m), rope(k, n)> equals <rope(q, m+s), rope(k, n+s)>: RoPE encodes offsets, not positions."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)                     # (B, H, T=1, D)
    cos, sin = rope_cache(seq_len=64, head_dim=16)                                # (64, D/2) each
    score = lambda m, n: (apply_rope(q, cos[m:m+1], sin[m:m+1]) * apply_rope(k, cos[n:n+1], sin[n:n+1])).sum()
    for m, n, s in [(3, 7, 37), (7, 3, 50), (0, 0, 63), (10, 30, 20)]:
        torch.testing.assert_close(score(m, n), score(m + s, n + s))
    assert not torch.allclose(score(3, 7), score(3, 8))                           # but the offset matters


def kv_weights(attn):
    """Split the fused key/value projection into (wk, wv), each (Hkv*D, C): keys come first."""
    return attn.wkv.weight.split(attn.n_kv_head * attn.head_dim, dim=0)


def reference_attention(attn, x, ctx=None, mask=None):
    """Attention written head by head from the module's weights: query head h reads kv head h // (H / Hkv)."""
    ctx = x if ctx is None else ctx
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    wk, wv = kv_weights(attn)
    q, k, v = x @ attn.wq.weight.T, ctx @ wk.T, ctx @ wv.T                       # (B, T, H*D), 2 x (B, S, Hkv*D)
    heads = []
    for h in range(H):
        g = h // (H // Hkv)
        qh, kh, vh = q[..., h*D:(h+1)*D], k[..., g*D:(g+1)*D], v[..., g*D:(g+1)*D]
        s = qh @ kh.transpose(1, 2) / math.sqrt(D)                               # (B, T, S)
        if mask is not None:
            s = s.masked_fill(~mask, float('-inf'))
        heads.append(s.softmax(-1) @ vh)                                          # (B, T, D)
    return torch.cat(heads, dim=-1) @ attn.wo.weight.T                            # (B, T, C)


def both_paths(attn, *args, **kw):
    """(fast SDPA output, explicit output, attention probabilities) of one call."""
    probs = []
    return attn(*args, **kw), attn(*args, probs=probs, **kw), probs[0]


@pytest.mark.parametrize('causal', [False, True])
def test_attention_with_as_many_kv_heads_as_heads_is_torch_mha(causal):
    """With n_kv_head == n_head our attention equals torch's nn.MultiheadAttention loaded with the same weights."""
    torch.manual_seed(0)
    attn = Attention(32, 4, 4)
    mha = nn.MultiheadAttention(32, 4, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.wq.weight, *kv_weights(attn)]))
        mha.out_proj.weight.copy_(attn.wo.weight)
    x = torch.randn(2, 9, 32)
    # nn.MultiheadAttention masks where True; ours attends where True
    ref = mha(x, x, x, need_weights=False, attn_mask=torch.ones(9, 9, dtype=torch.bool).triu(1) if causal else None)[0]
    fast, explicit, _ = both_paths(attn, x, mask='causal' if causal else None)
    close(fast, ref)
    close(explicit, ref)
    close(reference_attention(attn, x, mask=torch.ones(9, 9, dtype=torch.bool).tril() if causal else None), ref)


@pytest.mark.parametrize('n_kv_head', [1, 2, 4])
def test_gqa_equals_per_group_computation(n_kv_head):
    """GQA equals the head-by-head computation where query head h uses kv head h // (H/Hkv), for self and cross."""
    torch.manual_seed(0)
    attn = Attention(32, 4, n_kv_head)
    assert attn.wkv.weight.shape == (2 * n_kv_head * 8, 32)
    x, img = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    for kw, ref in [(dict(mask='causal'), reference_attention(attn, x, mask=torch.ones(7, 7, dtype=torch.bool).tril())),
                    (dict(ctx=img), reference_attention(attn, x, ctx=img))]:
        fast, explicit, _ = both_paths(attn, x, **kw)
        close(fast, ref)
        close(explicit, ref)


@pytest.mark.parametrize('mask', ['none', 'causal', 'prefix'])
def test_attention_matches_sdpa_reference(mask):
    """Our attention (with RoPE and GQA) matches F.scaled_dot_product_attention(enable_gqa=True) on the same q, k, v."""
    torch.manual_seed(0)
    attn, (B, T, H, Hkv, D) = Attention(32, 4, 2), (2, 8, 4, 2, 8)
    x = torch.randn(B, T, 32)
    cos, sin = rope_cache(T, D)
    wk, wv = kv_weights(attn)
    q = apply_rope((x @ attn.wq.weight.T).view(B, T, H, D).transpose(1, 2), cos, sin)   # (B, H, T, D)
    k = apply_rope((x @ wk.T).view(B, T, Hkv, D).transpose(1, 2), cos, sin)            # (B, Hkv, T, D)
    v = (x @ wv.T).view(B, T, Hkv, D).transpose(1, 2)                                 # (B, Hkv, T, D)
    ours = {'none': None, 'causal': 'causal', 'prefix': prefix_lm_mask(3, T)}[mask]
    bool_mask = ours if mask != 'causal' else torch.ones(T, T, dtype=torch.bool).tril()  # (T, T), True = attend
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask, enable_gqa=True)  # (B, H, T, D)
    ref = y.transpose(1, 2).reshape(B, T, H * D) @ attn.wo.weight.T                    # (B, T, C)
    fast, explicit, probs = both_paths(attn, x, rope=(cos, sin), mask=ours)
    close(fast, ref)
    close(explicit, ref)
    assert probs.shape == (B, H, T, T)
    close(probs.sum(-1), torch.ones(B, H, T))


def test_rmsnorm_matches_torch_rmsnorm():
    """RMSNorm with weight w equals nn.RMSNorm with weight 1 + w (Gemma's zero-centred scale)."""
    torch.manual_seed(0)
    ours, ref = RMSNorm(16, eps=1e-6), nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(1.0 + ours.weight)
    x = torch.randn(3, 5, 16) * 4
    close(ours(x), ref(x))
    close(RMSNorm(16)(x), nn.RMSNorm(16, eps=1e-6)(x))                            # zero init is plain RMS scaling
    assert ours(x.bfloat16()).dtype == torch.bfloat16

# -----------------------------------------------------------------------------
# The decoder and the fused model: masks and invariances


@pytest.mark.parametrize('kw', VARIANTS, ids=VARIANT_IDS)
def test_decoder_is_causal(kw):
    """Changing text token j changes the hidden state at j but at no earlier position, under every fusion."""
    model = make_model(**kw)
    prefix, ctx = image_inputs(model, images(2))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, len(TOK), (2, 10), generator=g)
    with torch.no_grad():
        h = model.dec(tokens, prefix, ctx)
        assert h.shape == (2, 10, 32)
        for j in [1, 5, 9]:
            changed = tokens.clone()
            changed[:, j] = 4 + (changed[:, j] - 3) % (len(TOK) - 4)               # a different real token
            h2 = model.dec(changed, prefix, ctx)
            torch.testing.assert_close(h2[:, :j], h[:, :j], rtol=0, atol=1e-6)
            assert not torch.allclose(h2[:, j], h[:, j])


@pytest.mark.parametrize('kw', VARIANTS, ids=VARIANT_IDS)
def test_padding_does_not_change_answers(kw):
    """Extra trailing padding changes no answer logit (questions of several lengths in one batch)."""
    model = make_model(**kw)
    qs = ["is there a pedestrian?", "is the light red?", "what's the weather?"]
    short, long = encode(qs, 8), encode(qs, 12)
    assert (long[:, 8:] == 0).all() and not torch.equal((short != 0).sum(1), torch.full((3,), 8))
    with torch.no_grad():
        a, b = model(images(3), short)[0], model(images(3), long)[0]
    close(a, b)
    assert a.abs().sum() > 0


@pytest.mark.parametrize('kw', VARIANTS, ids=VARIANT_IDS)
def test_fast_path_equals_explicit_path(kw):
    """Passing an `out` dict (explicit softmax, weights recorded) gives the same logits and loss as SDPA."""
    model = make_model(**kw)
    imgs, toks, y = images(3), encode(CORPUS[:3]), torch.tensor([1, 2, 0])
    out = {}
    with torch.no_grad():
        fast, explicit = model(imgs, toks, y), model(imgs, toks, y, out=out)
    close(explicit[0], fast[0])
    close(explicit[1], fast[1])
    assert out['grid'] == (4, 6)
    assert len(out['self_attn']) == model.cfg.dec_depth
    assert len(out['vit_attn']) == (0 if model.cfg.fusion == 'none' else model.cfg.vit_depth)
    assert torch.equal(out['summary_idx'], (toks != 0).sum(1) - 1)
    assert (toks[torch.arange(3), out['summary_idx']] == Tokenizer.eos_id).all()


@pytest.mark.parametrize('fusion', ['cross', 'both'])
def test_cross_attention_probs_sum_to_one_over_image_tokens(fusion):
    """Cross-attention maps are (B, H, T, P) and each text row is a distribution over the image tokens."""
    model, out = make_model(fusion=fusion), {}
    with torch.no_grad():
        model(images(2), encode(CORPUS[:2]), out=out)
    assert len(out['cross_attn']) == 2
    for att in out['cross_attn']:
        assert att.shape == (2, 4, 12, 24)
        assert (att >= 0).all()
        close(att.sum(-1), torch.ones(2, 4, 12))
    for att in out['vit_attn']:
        assert att.shape == (2, 2, 24, 24)
        close(att.sum(-1), torch.ones(2, 2, 24))


def test_prefix_fusion_has_no_cross_attention():
    """Prefix fusion has no cross-attention layers, so out['cross_attn'] stays empty and out['prefix'] == P."""
    model, out = make_model(fusion='prefix'), {}
    with torch.no_grad():
        model(images(2), encode(CORPUS[:2]), out=out)
    assert out['cross_attn'] == [] and out['prefix'] == 24
    assert all(b.cross is None for b in model.dec.blocks)


@pytest.mark.parametrize('fusion', ['prefix', 'both'])
def test_prefix_attention_sees_image_and_past_text_only(fusion):
    """Under the prefix-LM mask, text rows put zero mass on future text and some on the image prefix;
    image rows put zero mass on text."""
    model, out = make_model(fusion=fusion), {}
    with torch.no_grad():
        model(images(2), encode(CORPUS[:2]), out=out)
    P, T = out['prefix'], 12
    assert P == 24
    for att in out['self_attn']:
        assert att.shape == (2, 4, P + T, P + T)
        close(att.sum(-1), torch.ones(2, 4, P + T))
        assert (att[:, :, :P, P:] == 0).all()                                     # the image does not read text
        assert (att[:, :, :P, :P].sum(-1) > 0.999).all()
        for t in range(T):
            assert (att[:, :, P + t, P + t + 1:] == 0).all()                      # no peeking at later text
            assert (att[:, :, P + t, :P].sum(-1) > 0).all()                       # the text reads the image


def test_prefix_lm_mask_matches_worked_example():
    """prefix_lm_mask(3, 6) is the matrix drawn in its docstring."""
    expected = torch.tensor([[1, 1, 1, 0, 0, 0]] * 3 + [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(prefix_lm_mask(3, 6), expected.bool())


@pytest.mark.parametrize('fusion', FUSIONS)
def test_shared_image_forward_equals_repeated_images(fusion):
    """Questions that share an image via image_idx get the logits and loss of the same images repeated."""
    model = make_model(fusion=fusion)
    imgs, idx = images(2), torch.tensor([0, 0, 1, 1, 0])
    toks, y = encode(CORPUS), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        shared, repeated = model(imgs, toks, y, image_idx=idx), model(imgs[idx], toks, y)
        out = {}
        shared_explicit = model(imgs, toks, y, image_idx=idx, out=out)
    close(shared[0], repeated[0])
    close(shared[1], repeated[1])
    close(shared_explicit[0], repeated[0])
    assert out['vit_attn'][0].shape[0] == 2                                       # the ViT ran once per image
    assert not torch.allclose(shared[0][1], shared[0][2])                         # the images do matter


@pytest.mark.parametrize('fusion', FUSIONS)
def test_k_questions_per_image_equal_the_gathered_images(fusion):
    """image_idx=k (train.py's batches: k questions per image, in order; cross-attention folds them into one query
    sequence per image) gives the logits, loss, gradients and attention maps of the gathered image_idx tensor."""
    imgs, toks = images(2), encode(CORPUS[:4])
    y, idx = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1])
    looks = torch.rand(4, 4, 6, generator=torch.Generator().manual_seed(0))       # (B, Hi/p, Wi/p)
    looks /= looks.sum((1, 2), keepdim=True)
    results = []
    for image_idx in (idx, 2):  # the look loss too: it reads each question's summary row of the folded maps
        model, out = make_model(fusion=fusion, look_weight=0.0 if fusion == 'prefix' else 0.5), {}
        logits, loss = model(imgs, toks, y, image_idx=image_idx, look_targets=looks)
        loss.backward()
        with torch.no_grad():
            model(imgs, toks, image_idx=image_idx, out=out)
        results.append((logits, loss, [p.grad for p in model.parameters()], out['cross_attn']))
    (logits, loss, grads, maps), (logits_k, loss_k, grads_k, maps_k) = results
    close(logits_k, logits)
    close(loss_k, loss)
    for g, g_k in zip(grads, grads_k):
        close(g_k, g)
    assert len(maps_k) == len(maps) == (0 if fusion == 'prefix' else 2)
    for m, m_k in zip(maps, maps_k):
        assert m_k.shape == m.shape and m.shape[:3] == (4, 4, toks.shape[1])    # (B, H, T, S): a map per question
        close(m_k, m)


@pytest.mark.parametrize('fusion,pos', [('cross', 'rope'), ('cross', 'learned'), ('none', 'rope')])
def test_last_block_on_the_summary_row_alone_equals_the_full_decoder(fusion, pos):
    """A classifier's forward computes the last decoder block for the summary row alone (Decoder's only=); asked
    for every row's maps (out=), it computes them all. Logits, loss (the look loss too) and gradients agree."""
    imgs, toks = images(2), encode(CORPUS[:4])                                    # questions of different lengths
    y = torch.tensor([0, 1, 2, 3])
    looks = torch.rand(4, 4, 6, generator=torch.Generator().manual_seed(0))       # (B, Hi/p, Wi/p)
    looks /= looks.sum((1, 2), keepdim=True)
    model = make_model(fusion=fusion, pos=pos, look_weight=0.0 if fusion == 'none' else 0.5)
    results = []
    for out in (None, {}):
        model.zero_grad()
        logits, loss = model(imgs, toks, y, image_idx=2, look_targets=looks, out=out)
        loss.backward()
        results.append((logits, loss, [p.grad.clone() for p in model.parameters()]))
    (logits, loss, grads), (logits_all, loss_all, grads_all) = results
    assert (toks != 0).sum(1).unique().numel() > 1
    close(logits, logits_all)
    close(loss, loss_all)
    for g, g_all in zip(grads, grads_all):  # out= takes the explicit attention path, which rounds otherwise
        torch.testing.assert_close(g, g_all, rtol=1e-3, atol=1e-4)


def test_mirror_tables_swap_left_and_right():
    """hflip's and mirror's permutations: 'left' <-> 'right' in questions and answers, everything else unchanged."""
    tok = Tokenizer.build(['is the left lane clear?', 'is the right lane clear?'])
    t, a = mirror_tables(tok, ['yes', 'no', 'left', 'right'])
    assert t[tok.stoi['left']] == tok.stoi['right'] and t[tok.stoi['right']] == tok.stoi['left']
    assert t[tok.stoi['lane']] == tok.stoi['lane'] and a.tolist() == [0, 1, 3, 2]


def test_mirror_averages_the_image_and_its_mirror():
    """mirror=True, out of training: the log of the mean of two views' probabilities, the image with its question
    and the mirror image with 'left' and 'right' swapped; so a mirrored question about the mirror image gets the same
    answers. In training, and with mirror=False, one view."""
    imgs, toks, idx = images(2), encode(CORPUS[:4]), torch.tensor([0, 0, 1, 1])
    assert 'left' in CORPUS[1]
    plain, mirrored = make_model(), make_model(mirror=True)
    mirrored.load_state_dict(plain.state_dict())
    swap = torch.from_numpy(mirror_tables(TOK, ANSWERS)[0])
    with torch.no_grad():
        one, other = plain(imgs, toks, image_idx=idx)[0], plain(imgs.flip(2), swap[toks], image_idx=idx)[0]
        both = mirrored(imgs, toks, image_idx=idx)[0]                             # (B, A)
        close(both.exp(), (one.softmax(-1) + other.softmax(-1)) / 2)
        close(mirrored(imgs.flip(2), swap[toks], image_idx=idx)[0], both)         # ANSWERS has no left or right
        assert not torch.allclose(one, other)                                     # the views do differ
        mirrored.train()
        close(mirrored(imgs, toks, image_idx=idx)[0], one)


def test_blind_model_ignores_the_image():
    """fusion='none' has no vision tower and gives the same logits for different images; a seeing model does not."""
    blind, seeing = make_model(fusion='none'), make_model()
    assert blind.vit is None and blind.proj is None
    assert not any(n.startswith(('vit.', 'proj.')) for n, _ in blind.named_parameters())
    toks = encode(CORPUS[:2])
    with torch.no_grad():
        close(blind(images(2, seed=1), toks)[0], blind(images(2, seed=2), toks)[0])
        assert not torch.allclose(seeing(images(2, seed=1), toks)[0], seeing(images(2, seed=2), toks)[0])

# -----------------------------------------------------------------------------
# Generative answers (answer='generate'): "answer: reason" written after the question

REPLIES = ["yes: the light is red", "no: it is green", "no: nobody crosses", "yes: a man crosses"]
GEN_TOK = Tokenizer.build(CORPUS + REPLIES)


def gen_model(seed=0, **kw):
    """A tiny generate-mode model in eval mode, on a vocabulary that also holds the replies' words."""
    torch.manual_seed(seed)
    return TVLM(tiny_cfg(answer='generate', vocab_size=len(GEN_TOK), **kw), GEN_TOK, ANSWERS).eval()


def sequences(pairs):
    """[(question, reply)] -> int64 (B, T) `<bos> question <eos> reply <eos> <pad>..`, T the longest row."""
    rows = []
    for question, reply in pairs:
        q, r = GEN_TOK.encode(question, 32)[0], GEN_TOK.encode(reply, 32)[0]
        rows.append(list(q[q != 0]) + list(r[r != 0][1:]))                        # the reply without its <bos>
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.int64)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.tensor(row)
    return out


def test_answer_targets_matches_worked_example():
    """answer_targets on its docstring's example, plus a row that is only a question: it has nothing to learn."""
    tok = Tokenizer.build(["is it night? yes: it is dark"])
    ids = lambda words: [-100 if w == '-' else tok.stoi[{'bos': '<bos>', 'eos': '<eos>', 'pad': '<pad>'}.get(w, w)]
                         for w in words.split()]
    tokens = torch.tensor([ids('bos is it night ? eos yes : it is dark eos pad'),
                           ids('bos is it night ? eos pad pad pad pad pad pad pad')])
    expected = torch.tensor([ids('-   -  -  -     - yes : it is dark eos -   -'), [-100] * 13])
    assert torch.equal(answer_targets(tokens), expected)


@pytest.mark.parametrize('smoothing, first', [(0.0, 1.0), (0.1, 1.0), (0.0, 3.0)])
def test_generate_loss_is_cross_entropy_over_the_answer_positions(smoothing, first):
    """The generate-mode loss is the mean next-token cross-entropy over exactly the positions from each question's
    <eos> to its reply's last word: nothing is learned from the question or the padding. With first_word_weight the
    first answer word (predicted at the question's <eos>) counts that many times in the mean."""
    model = gen_model(fusion='both', label_smoothing=smoothing, first_word_weight=first)
    seqs = sequences(list(zip(CORPUS[:3], REPLIES[:3])))
    logits, loss = model(images(2), seqs, answer_targets(seqs), image_idx=torch.tensor([0, 1, 1]))
    assert logits.shape == (*seqs.shape, len(GEN_TOK))
    rows, cols, labels, weights = [], [], [], []
    for b, seq in enumerate(seqs.tolist()):
        real = [t for t in seq if t != 0]
        for t in range(real.index(Tokenizer.eos_id), len(real) - 1):              # the question's <eos> .. last word
            rows.append(b), cols.append(t), labels.append(real[t + 1])
            weights.append(first if t == real.index(Tokenizer.eos_id) else 1.0)
    ce = F.cross_entropy(logits[rows, cols], torch.tensor(labels), label_smoothing=smoothing, reduction='none')
    weights = torch.tensor(weights)
    close(loss, (ce * weights).sum() / weights.sum())
    assert len(labels) == sum(len(GEN_TOK.split(r)) + 1 for r in REPLIES[:3])   # each reply's words and its <eos>


@pytest.mark.parametrize('kw', VARIANTS, ids=VARIANT_IDS)
def test_cached_decoding_equals_full_forward(kw):
    """Feeding a prompt (with the image prefix), then one token at a time through the key/value cache, gives the
    hidden states of one full forward pass, at every position; questions share images through image_idx."""
    model, imgs, idx = gen_model(**kw), images(2), torch.tensor([0, 0, 1, 1, 0])
    tokens = torch.randint(4, len(GEN_TOK), (5, 20), generator=torch.Generator().manual_seed(0))   # (B, T)
    cache = [{'self': {}, 'cross': {}} for _ in model.dec.blocks]
    with torch.no_grad():
        _, prefix, ctx = model.encode_image(imgs, idx)
        full = model.dec(tokens, prefix, ctx, idx)                                # (B, T, C)
        steps = [model.dec(tokens[:, :7], prefix, ctx, idx, cache=cache)]       # the prompt
        steps += [model.dec(tokens[:, t:t + 1], None, ctx, idx, cache=cache) for t in range(7, 20)]
    close(torch.cat(steps, dim=1), full)
    P = 0 if prefix is None else prefix.shape[1]
    assert cache[0]['self']['k'].shape == (5, 2, P + 20, 8)                        # (B, Hkv, P+T, D)


@pytest.mark.parametrize('kw', VARIANTS, ids=VARIANT_IDS)
def test_cached_greedy_decoding_equals_uncached(kw):
    """generate() with the cache writes token for token what rerunning the whole sequence writes, up to the end of
    the position tables (max_q_len + max_answer_len), with several questions per image (by index, or k per image in
    order); cross-attention projects
    each image's keys and values once, not per step or per question; rows that wrote <eos> continue with <pad>."""
    model, imgs, idx = gen_model(**kw), images(2), torch.tensor([0, 0, 1, 1, 0])
    with torch.no_grad():  # an untrained tied head mostly echoes its input: smaller embeddings let the context speak
        model.dec.embed.weight.mul_(0.1)
    prompts = torch.randint(4, len(GEN_TOK), (5, 6), generator=torch.Generator().manual_seed(0))  # (B, T)
    projected = []                                                                  # rows of each image k/v projection
    for block in model.dec.blocks:
        if block.cross is not None:
            block.cross.wkv.register_forward_hook(lambda mod, args, y: projected.append(args[0].shape[0]))
    cached = model.generate(imgs, prompts, 18, image_idx=idx)
    assert projected == [2] * (model.cfg.dec_depth if model.cfg.image_cross else 0)
    assert torch.equal(cached, model.generate(imgs, prompts, 18, image_idx=idx, use_cache=False))
    assert cached.shape == (5, 24) and torch.equal(cached[:, :6], prompts)
    in_order = model.generate(imgs, prompts[:4], 18, image_idx=torch.tensor([0, 0, 1, 1]))   # k per image, as an int
    assert torch.equal(model.generate(imgs, prompts[:4], 18, image_idx=2), in_order)
    assert max(len(set(row)) for row in cached[:, 6:].tolist()) > 2, "the test decodes nothing but echoes"
    for row in cached[:, 6:].tolist():
        if Tokenizer.eos_id in row:
            assert set(row[row.index(Tokenizer.eos_id) + 1:]) <= {Tokenizer.pad_id}


def test_generate_mode_overfits_eight_sequences():
    """llm.c's sanity check: trained on 8 fixed (image, question, reply) sequences, a tiny generate-mode model writes
    each reply back word for word by greedy decoding. The replies differ between images, so it has to look."""
    model, imgs = gen_model(fusion='cross'), images(4)
    questions = [CORPUS[0], CORPUS[2]]
    replies = {CORPUS[0]: [REPLIES[0], REPLIES[1], REPLIES[0], REPLIES[1]],       # per image 0..3
               CORPUS[2]: [REPLIES[2], REPLIES[3], REPLIES[3], REPLIES[2]]}
    pairs = [(q, replies[q][i]) for q in questions for i in range(4)]
    seqs, idx = sequences(pairs), torch.arange(4).repeat(2)                       # (8, T), (8,)
    targets = answer_targets(seqs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(400):                                                     # ~210 steps on seeds 0-2
        _, loss = model(imgs, seqs, targets, image_idx=idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    assert loss.item() < 0.01, f"the loss is still {loss.item():.3f} after {step + 1} steps"
    for q in questions:
        ids = GEN_TOK.encode(q, 32)[0]
        prompt = torch.from_numpy(ids[ids != 0]).repeat(4, 1)                      # (4, Tq) up to the question's <eos>
        out = model.generate(imgs, prompt, model.cfg.max_answer_len, image_idx=torch.arange(4))
        want = sequences([(q, r) for r in replies[q]])                              # shorter replies end in <pad>
        assert torch.equal(out, want), f"{q}:\n{out}\n!=\n{want}"
    ans, prob, extra = model.answer(imgs[1].numpy(), CORPUS[0])
    assert (ans, extra) == ('no', {'reason': 'it is green'}) and 0.5 < prob <= 1


def test_generate_mode_has_no_classifier_head():
    """answer='generate' drops the head (and only it) and sizes the position tables for question + answer."""
    classify, generate = make_model(fusion='prefix', pos='learned'), gen_model(fusion='prefix', pos='learned')
    assert generate.head is None
    assert {n for n, _ in classify.named_parameters()} - {n for n, _ in generate.named_parameters()} == \
        {'head.weight', 'head.bias'}
    assert classify.dec.wpe.shape[0] == 12 + 24 and generate.dec.wpe.shape[0] == 12 + 12 + 24


# -----------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_round_trip():
    """decode(encode(q)) gives back the lower-cased question, with <bos>, <eos> and a padding mask."""
    for q in CORPUS:
        ids, mask = TOK.encode(q, 16)
        assert ids.dtype == np.int64 and ids.shape == (16,) and mask.dtype == bool
        assert ids[0] == Tokenizer.bos_id and ids[mask.sum() - 1] == Tokenizer.eos_id
        assert np.array_equal(mask, ids != 0) and mask[:mask.sum()].all()
        assert TOK.decode(ids) == q.lower()
    assert TOK.specials == ['<pad>', '<unk>', '<bos>', '<eos>'] and TOK.itos[:4] == TOK.specials
    assert TOK.split("What's the weather, today?") == ["what's", 'the', 'weather', ',', 'today', '?']
    assert TOK.split("¿Está libre el carril_2?") == ['¿', 'está', 'libre', 'el', 'carril', '_', '2', '?']  # a word whole


def test_tokenizer_unknown_words_map_to_unk():
    """Words outside the vocabulary (and odd characters) become <unk>, never an exception."""
    ids, mask = TOK.encode("Is the zeppelin ünder the bridge?", 12)
    words = TOK.split("Is the zeppelin ünder the bridge?")
    assert (ids[1:1 + len(words)] == Tokenizer.unk_id).sum() >= 3
    assert ids[1] == TOK.stoi['is'] and ids[1 + len(words)] == Tokenizer.eos_id
    assert '<unk>' in TOK.decode(ids)
    assert TOK.decode([0, 2, 999, 3]) == '<unk>'                                  # out-of-range ids too
    assert (TOK.encode("", 4)[0] == [2, 3, 0, 0]).all()


def test_tokenizer_truncation_keeps_eos():
    """A question longer than max_len is cut, but still starts with <bos> and ends with <eos>."""
    ids, mask = TOK.encode("is the light red " * 10, 8)
    assert ids.shape == (8,) and mask.all()
    assert ids[0] == Tokenizer.bos_id and ids[-1] == Tokenizer.eos_id
    assert TOK.decode(ids) == "is the light red is the"


def test_tokenizer_serialises_to_plain_dict():
    """to_dict is plain JSON; from_dict rebuilds a tokenizer with the same ids; build is deterministic."""
    d = json.loads(json.dumps(TOK.to_dict()))
    tok2 = Tokenizer.from_dict(d)
    assert tok2.itos == TOK.itos and len(tok2) == len(TOK)
    for q in CORPUS + ["an unseen question?"]:
        assert np.array_equal(tok2.encode(q, 12)[0], TOK.encode(q, 12)[0])
    assert Tokenizer.build(reversed(CORPUS)).itos == TOK.itos

# -----------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(model, path, temperature=1.0):
    """The checkpoint dict as train.py writes it: tensors and plain Python values only."""
    torch.save({'model': model.state_dict(), 'model_args': dataclasses.asdict(model.cfg),
                'tokenizer': TOK.to_dict(), 'answers': list(ANSWERS), 'temperature': temperature}, path)


@pytest.mark.parametrize('kw', [dict(fusion='both'), dict(fusion='prefix', pos='learned'), dict(fusion='none')],
                         ids=['both', 'prefix-learned', 'blind'])
def test_checkpoint_round_trip(tmp_path, kw):
    """A checkpoint loads under torch.load(weights_only=True) and from_checkpoint gives identical logits."""
    model, path = make_model(**kw), str(tmp_path / 'ckpt.pt')
    save_checkpoint(model, path, temperature=1.5)
    assert set(torch.load(path, weights_only=True)) >= {'model', 'model_args', 'tokenizer', 'answers'}
    loaded = TVLM.from_checkpoint(path, 'cpu')
    assert not loaded.training and loaded.temperature == 1.5
    assert loaded.answers == ANSWERS and loaded.tokenizer.itos == TOK.itos and loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded(images(2), encode(CORPUS[:2]))[0], model(images(2), encode(CORPUS[:2]))[0])


class _Payload:
    """Unpickling this runs code: it creates the marker file, through exec or a shell."""
    def __init__(self, marker, via):
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == 'exec':
            return exec, (f"open({self.marker!r}, 'w').close()",)
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize('writer, via', [('torch.save', 'exec'), ('pickle.dump', 'exec'), ('torch.save', 'os.system')])
def test_checkpoint_that_runs_code_is_refused(tmp_path, writer, via):
    """A checkpoint with a code-running pickle is refused with a ValueError that says so (torch words its refusal
    "Unsupported global" or "unsupported GLOBAL" by what the pickle calls), and the code never runs."""
    marker, path = tmp_path / 'pwned', str(tmp_path / 'evil.pt')
    ckpt = {'model': make_model().state_dict(), 'model_args': dataclasses.asdict(tiny_cfg()),
            'tokenizer': TOK.to_dict(), 'answers': ANSWERS, 'temperature': _Payload(str(marker), via)}
    if writer == 'torch.save':
        torch.save(ckpt, path)
    else:
        with open(path, 'wb') as f:
            pickle.dump(ckpt, f, protocol=2)                                     # torch.save's protocol
    with pytest.raises(ValueError, match=r"refusing to load .*could run code"):
        TVLM.from_checkpoint(path, 'cpu')
    assert not marker.exists()
    unsafe_load = (lambda f: torch.load(f, weights_only=False)) if writer == 'torch.save' else pickle.load
    with open(path, 'rb') as f:
        unsafe_load(f)                                                           # the control: the payload is real
    assert marker.exists()


def test_checkpoint_with_the_old_blind_flag_loads(tmp_path):
    """Checkpoints written before fusion='none' existed said blind=True; they load as the same model."""
    model, path = make_model(fusion='none'), str(tmp_path / 'old.pt')
    args = dict(dataclasses.asdict(model.cfg), fusion='cross', blind=True)
    torch.save({'model': model.state_dict(), 'model_args': args, 'tokenizer': TOK.to_dict(), 'answers': ANSWERS}, path)
    assert TVLM.from_checkpoint(path).cfg == model.cfg


@pytest.mark.parametrize('content', [b'', b'PK\x03\x04 half a zip', b'not a checkpoint at all'])
def test_truncated_or_garbage_checkpoint_is_one_clear_line(tmp_path, content):
    path = tmp_path / 'bad.pt'
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"not a readable torch checkpoint") as e:
        load_checkpoint(str(path))
    assert '\n' not in str(e.value)


def test_load_pretrained_matches_words_and_answers_by_name():
    """Fine-tuning on a dataset with other words and answers: known words keep their embedding rows and known
    answers their head rows, wherever their new ids are; new ones keep the fresh init; same-shaped tensors copy."""
    src = make_model(random_head=True)
    ckpt = {'model': src.state_dict(), 'tokenizer': TOK.to_dict(), 'answers': ANSWERS}
    words = ['zebra'] + TOK.itos[4:][::-1]                               # one new word, the rest in another order
    dst = TVLM(tiny_cfg(vocab_size=len(words) + 4, n_answers=3), Tokenizer(words), ['maybe', 'no', 'yes'])
    fresh_zebra = dst.dec.embed.weight[dst.tokenizer.stoi['zebra']].clone()
    partial = dst.load_pretrained(ckpt)
    for w in TOK.itos:
        torch.testing.assert_close(dst.dec.embed.weight[dst.tokenizer.stoi[w]], src.dec.embed.weight[TOK.stoi[w]])
    torch.testing.assert_close(dst.dec.embed.weight[dst.tokenizer.stoi['zebra']], fresh_zebra)
    torch.testing.assert_close(dst.head.weight[1:], src.head.weight[[1, 0]])       # 'no', 'yes'
    assert dst.head.weight[0].abs().sum() == 0                                      # 'maybe': the zero init
    torch.testing.assert_close(dst.vit.patch.weight, src.vit.patch.weight)
    assert partial == ['dec.embed.weight (1 of %d rows new)' % len(dst.tokenizer), 'head.weight (1 of 3 rows new)',
                       'head.bias (1 of 3 rows new)']


def test_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(tmp_path):
    model, path = make_model(), str(tmp_path / 'odd.pt')
    args = dict(dataclasses.asdict(model.cfg), dec_mlp=96)                   # the weights were built with 64
    torch.save({'model': model.state_dict(), 'model_args': args, 'tokenizer': TOK.to_dict(), 'answers': ANSWERS}, path)
    with pytest.raises(ValueError, match=r"weights do not fit its own model_args") as e:
        TVLM.from_checkpoint(path)
    assert '\n' not in str(e.value)


def test_missing_checkpoint_gives_a_hint(tmp_path):
    """A missing checkpoint raises FileNotFoundError that says how to make one."""
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*train\.py"):
        TVLM.from_checkpoint(str(tmp_path / 'nope.pt'))


def test_checkpoint_without_model_keys_is_refused(tmp_path):
    """A weights-only file that is not a tvlm checkpoint names the keys it lacks."""
    path = str(tmp_path / 'other.pt')
    torch.save({'model': {}, 'iter_num': 3}, path)
    with pytest.raises(ValueError, match=r"not a tvlm checkpoint.*answers.*model_args.*tokenizer"):
        TVLM.from_checkpoint(path)

# -----------------------------------------------------------------------------
# answer() and input errors


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_image_refuses_what_it_cannot_read_as_a_picture():
    """A tensor, float or CHW array, an empty image or float pixels: one-line errors, not a deep PIL error or a black
    picture; 8-bit values held in PIL's 32-bit mode 'I' keep their picture (only 16-bit ones are shifted down)."""
    rgb = _rgb(32, 48)
    for bad, kind, words in ((torch.from_numpy(rgb), TypeError, 'not Tensor ---> HINT: a torch tensor: .numpy()'),
                             (rgb.astype(np.float32) / 255, ValueError, 'must be uint8 HxW, HxWx3 or HxWx4, not float'),
                             (rgb.transpose(2, 0, 1), ValueError, r'not uint8 \(3, 32, 48\)'),
                             (rgb[:0], ValueError, 'cannot read a 48x0 image'),
                             (Image.fromarray(rgb[..., 0].astype(np.float32)), ValueError, 'of mode F')):
        with pytest.raises(kind, match=words):
            load_image(bad, 32, 48)
    grey = rgb[..., 0]
    np.testing.assert_array_equal(load_image(Image.fromarray(grey).convert('I'), 32, 48), load_image(grey, 32, 48))


def test_answer_refuses_a_question_that_is_not_text_and_a_model_in_train_mode():
    model = make_model()
    with pytest.raises(TypeError, match="a question is a str, not NoneType"):
        model.answer(_rgb(32, 48), None)
    model.train()
    with pytest.raises(RuntimeError, match=r"answer\(\) is inference: call model.eval\(\) first"):
        model.answer(_rgb(32, 48), 'Is the light red?')


def test_from_checkpoint_names_a_missing_entry_and_a_temperature_that_cannot_divide(tmp_path):
    model = make_model()
    ckpt = {'model': model.state_dict(), 'model_args': dataclasses.asdict(model.cfg), 'tokenizer': TOK.to_dict(),
            'answers': ANSWERS}
    with pytest.raises(ValueError, match="not a tvlm checkpoint: it lacks 'tokenizer'"):
        TVLM.from_checkpoint({k: v for k, v in ckpt.items() if k != 'tokenizer'})
    with pytest.raises(ValueError, match="temperature is 0.0; .* must be > 0"):
        TVLM.from_checkpoint({**ckpt, 'temperature': 0.0})
    with pytest.raises(TypeError, match="a checkpoint is a path or a file, not NoneType"):
        load_checkpoint(None)


def _palette_png(tmp_path):
    img = Image.fromarray(_rgb(50, 70)).convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
    img.info['transparency'] = 0
    img.save(tmp_path / 'palette.png')
    assert Image.open(tmp_path / 'palette.png').mode == 'P'
    return str(tmp_path / 'palette.png')


def _jpeg(tmp_path, mode):
    Image.fromarray(_rgb(400, 600)).convert(mode).save(tmp_path / f'{mode}.jpg', quality=90)
    return str(tmp_path / f'{mode}.jpg')


IMAGE_KINDS = {
    'rgba_pil': lambda tmp: Image.fromarray(np.dstack([_rgb(40, 60), np.full((40, 60), 128, np.uint8)])),
    'greyscale_pil': lambda tmp: Image.fromarray(_rgb(40, 60)[..., 0]),
    'palette_png': _palette_png,
    'rgb_jpeg_path': lambda tmp: _jpeg(tmp, 'RGB'),
    'greyscale_jpeg_path': lambda tmp: _jpeg(tmp, 'L'),
    'odd_sized_array': lambda tmp: _rgb(37, 91),
    'tall_rgba_array': lambda tmp: np.dstack([_rgb(91, 37), np.zeros((91, 37), np.uint8)]),
    'greyscale_array': lambda tmp: _rgb(37, 91)[..., 0],
    'exact_size_array': lambda tmp: _rgb(32, 48),
}


@pytest.mark.parametrize('kind', list(IMAGE_KINDS))
def test_answer_accepts_any_image(tmp_path, kind):
    """answer() takes paths, PIL images and arrays of any size and mode and returns a valid distribution."""
    model, src = make_model(), IMAGE_KINDS[kind](tmp_path)
    pixels = load_image(src, 32, 48)
    assert pixels.shape == (32, 48, 3) and pixels.dtype == np.uint8
    ans, prob, dist = model.answer(src, "Is the traffic light red?")
    assert ans in ANSWERS and list(dist) == ANSWERS
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-5)
    assert prob == dist[ans] == max(dist.values()) and 0 < prob <= 1


def test_load_image_centre_crops_to_aspect():
    """A too-wide image loses its sides, not its aspect: a centred square of colour stays in the middle."""
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 24:72] = 255                                                          # the central 32x48 is white
    assert (load_image(wide, 32, 48) == 255).all()


def test_load_image_turns_a_photo_as_its_exif_orientation_says(tmp_path):
    """A phone stores a portrait photo sideways, with EXIF orientation 6 (turn 90 degrees clockwise to view): the
    model must see it as a viewer shows it, white on top, not white on the left as the pixels are stored."""
    stored = np.zeros((48, 96, 3), np.uint8)
    stored[:, :48] = 255                                                          # the stored left half is white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / 'portrait.jpg', exif=exif, quality=95)
    shown = load_image(tmp_path / 'portrait.jpg', 48, 24).astype(int)            # (48, 24, 3) upright
    assert shown[:20].mean() > 240 and shown[28:].mean() < 15


def test_load_image_reads_16_bit_greyscale_as_its_8_bit_picture(tmp_path):
    """A 16-bit PNG (medical and industrial cameras write them) keeps its picture: convert('RGB') alone clipped every
    pixel above 255 of 65535 to white."""
    ramp = np.linspace(0, 65535, 48 * 32).reshape(32, 48).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'ramp16.png')
    got = load_image(tmp_path / 'ramp16.png', 32, 48).astype(int)
    np.testing.assert_allclose(got[..., 0], ramp >> 8, atol=1)
    assert (got[..., 0] == got[..., 2]).all()


def test_wrong_image_size_is_a_clear_error():
    """forward() on images of the wrong size, dtype or count raises a ValueError naming what it takes."""
    model = make_model()
    with pytest.raises(ValueError, match=r"32x48"):
        model(images(1, h=48, w=32), encode(CORPUS[:1]))
    with pytest.raises(ValueError, match=r"images are torch.float32 32x48 but the model takes uint8 32x48 \(0-255\)"):
        model(images(1).float() / 255, encode(CORPUS[:1]))                      # not silently read as near-black
    with pytest.raises(ValueError, match=r"3 images for 2 questions: .* or image_idx"):
        model(images(3), encode(CORPUS[:2]))


@pytest.mark.parametrize('fusion', ['cross', 'prefix'])
def test_more_text_tokens_than_positions_is_a_clear_error(fusion):
    """Tokens past the decoder's position tables raise a ValueError that names the limit, not a broadcast error."""
    model = make_model(fusion=fusion)
    T = model.cfg.max_text_len + 1
    with pytest.raises(ValueError, match=rf"{T} text tokens, the model has positions for {T - 1}"):
        model(images(2), torch.randint(4, 10, (2, T)))


@pytest.mark.parametrize('kw, problem', [
    (dict(dec_width=30), r"dec_width=30 not divisible by dec_heads=4"),
    (dict(vit_width=33), r"vit_width=33 not divisible by vit_heads=2"),
    (dict(dec_heads=4, dec_kv_heads=3), r"dec_heads=4 not divisible by dec_kv_heads=3"),
    (dict(img_h=30), r"image 30x48 is not divisible by patch 8"),
    (dict(img_w=50), r"image 32x50 is not divisible by patch 8"),
    (dict(fusion='late'), r"fusion='late'"),
    (dict(pos='alibi'), r"pos='alibi'"),
    (dict(stem=(8, 16)), r"a stem of 2 stride-2 convs shrinks by 4, not by patch=8"),
    (dict(answer='speak'), r"answer='speak' must be 'classify' or 'generate'"),
    (dict(answer='generate', focal_gamma=2.0), r"answer='generate' writes answers as words: .*focal_gamma"),
    (dict(answer='generate', answer_weights=(1.0,) * 5), r"answer='generate' writes answers as words: answer_weights"),
    (dict(patch=0), r"patch=0: sizes, depths"),                           # before the checks that divide by it
    (dict(vit_heads=0, dec_mlp=-5), r"vit_heads=0, dec_mlp=-5: sizes"),
    (dict(stem=(8.5, 16, 32)), r"stem=\(8.5, 16, 32\): sizes"),
    (dict(label_smoothing=1.0), r"label_smoothing=1.0 must be in \[0, 1\)"),
    (dict(look_weight=-1.0), r"the loss weights .* must be >= 0"),
])
def test_invalid_config_names_the_problem(kw, problem):
    """An invalid TVLMConfig raises a ValueError that names the offending values."""
    with pytest.raises(ValueError, match=problem):
        tiny_cfg(**kw)


@pytest.mark.parametrize('question', ['', '   \n'])
def test_empty_question_is_a_clear_error(question):
    """answer() refuses an empty question with a ValueError."""
    with pytest.raises(ValueError, match="question is empty"):
        make_model().answer(_rgb(32, 48), question)


def test_questions_the_model_cannot_read_whole_are_clear_errors():
    """answer() refuses a question with no words, or one longer than the model reads (encode() would cut it short
    and the model answer another question); one that just fits is answered."""
    model = make_model()
    with pytest.raises(ValueError, match="has no words"):
        model.answer(_rgb(32, 48), '???')
    fits = ' '.join(['is'] * (model.cfg.max_q_len - 3)) + '?'                     # max_q_len - 2 tokens
    assert model.answer(_rgb(32, 48), fits)[0] in ANSWERS
    with pytest.raises(ValueError, match=f"has {model.cfg.max_q_len - 1} words and marks"):
        model.answer(_rgb(32, 48), 'is ' + fits)


@pytest.mark.parametrize('answer', ['classify', 'generate'])
def test_unknown_words_are_answered_cant_answer(answer):
    """A question with a word the tokenizer does not know is answered "can't answer" by rule, naming the word, in
    answer() and in answer_logits() (eval's path) alike; a model without that class answers as before."""
    answers = ANSWERS + [CANT]
    tok = Tokenizer.build(CORPUS + answers)
    torch.manual_seed(0)
    model = TVLM(tiny_cfg(answer=answer, vocab_size=len(tok), n_answers=len(answers)), tok, answers).eval()
    ans, prob, extra = model.answer(_rgb(32, 48), "Is it snowing on the road?")
    assert (ans, prob, extra) == (CANT, 1.0, {'abstain': 'unknown words: it snowing'})
    q = torch.from_numpy(np.stack([tok.encode(x, 12)[0] for x in ("Is it snowing?", "Is there a pedestrian?")]))
    logits, _ = model(images(1), q, image_idx=torch.zeros(2, dtype=torch.long))
    scores = model.answer_logits(logits, q)                                          # (2, A)
    assert scores.argmax(1)[0] == answers.index(CANT) and scores.softmax(1)[0].max() > 0.999
    assert torch.isfinite(scores).all() and model.unknown_words(q).tolist() == [True, False]
    assert not make_model().unknown_words(q).any()                                  # no class to abstain with
    assert make_model().answer(_rgb(32, 48), "Is it snowing?")[0] in ANSWERS


@pytest.mark.parametrize('answer', ['classify', 'generate'])
def test_threshold_abstains_where_p_cant_answer_is_above_it(answer):
    """A question in known words gets "can't answer" when its p(can't answer) is above abstain_above, in answer() and
    answer_logits() alike, and the model's own answer when it is below; the default, 1, never abstains."""
    answers = ANSWERS + [CANT]
    tok = Tokenizer.build(CORPUS + answers)
    torch.manual_seed(0)
    model = TVLM(tiny_cfg(answer=answer, vocab_size=len(tok), n_answers=len(answers)), tok, answers).eval()
    question, img = "Is there a pedestrian?", _rgb(32, 48)
    q = torch.from_numpy(tok.encode(question, 12)[0])[None]                            # (1, T)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(img)[None], q)
    p_cant = float(model.answer_logits(logits, q, rules=False).softmax(1)[0, answers.index(CANT)])
    own = model.answer(img, question)
    assert model.abstain_above == 1.0 and own[0] != CANT
    for above, expected in ((p_cant - 1e-4, CANT), (p_cant + 1e-4, own[0])):
        model.abstain_above = above
        ans, prob, extra = model.answer(img, question)
        assert ans == expected and (extra.get('abstain') == 'the model judged it out of scope') == (ans == CANT)
        scores, raw = model.answer_logits(logits, q), model.answer_logits(logits, q, rules=False)   # (1, A) each
        assert (scores.argmax(1)[0] == answers.index(CANT)) == (ans == CANT)
        others = [i for i, a in enumerate(answers) if a != CANT]     # kept as they were, for NLL and temperature
        assert torch.equal(scores[:, others], raw[:, others]) and scores.max() <= raw.max() + 1e-3

# -----------------------------------------------------------------------------
# Optimizer, schedule and FLOPs


def test_configure_optimizers_groups():
    """Matrices decay and norms/biases do not; every parameter is in exactly one group with its component's lr_scale;
    muon=True moves the transformer blocks' matrices and the conv stem's filters but the first, and only them,
    from AdamW to Muon; without a stem, the patchify conv stays on AdamW."""
    model = make_model(fusion='both')
    scale = {'vit': 0.1, 'proj': 0.5, 'dec': 1.0, 'head': 2.0}
    opt, = configure_optimizers(model, weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95), device_type='cpu', lr_scale=scale)
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g['params']]
    assert sorted(seen) == sorted(names.values())
    for g in opt.param_groups:
        for p in g['params']:
            name = names[id(p)]
            assert g['lr_scale'] == scale[name.split('.')[0]]
            assert g['weight_decay'] == (0.1 if p.dim() >= 2 else 0.0), name
    decayed = {names[id(p)] for g in opt.param_groups if g['weight_decay'] > 0 for p in g['params']}
    assert {'dec.blocks.0.attn.wq.weight', 'vit.patch.weight', 'head.weight', 'proj.weight'} <= decayed
    assert not any('norm' in n or n.endswith('bias') for n in decayed)
    plain, = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    assert all(g['lr_scale'] == 1.0 for g in plain.param_groups)
    adamw, muon = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), 'cpu', lr_scale=scale, muon=True)
    in_muon = {names[id(p)] for g in muon.param_groups for p in g['params']}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g['params']}
    assert in_muon | in_adamw == set(names.values()) and not in_muon & in_adamw
    assert in_muon == {n for n, p in model.named_parameters() if '.blocks.' in n and p.dim() == 2}
    assert {'vit.blocks.0.mlp.fc.weight', 'dec.blocks.0.cross.wkv.weight'} <= in_muon and 'vit.patch.weight' in in_adamw
    assert all(g['lr_scale'] == scale[g['name'].split('_')[0]] and g['weight_decay'] == 0.1 for g in muon.param_groups)
    stem = make_model(stem=(4, 8, 16))                          # conv, BatchNorm, ReLU x 3, then a 1x1 conv: 0, 3, 6, 9
    _, muon = configure_optimizers(stem, 0.1, 1e-3, (0.9, 0.95), 'cpu', muon=True)
    names = {id(p): n for n, p in stem.named_parameters()}
    convs = {names[id(p)] for g in muon.param_groups for p in g['params'] if p.dim() == 4}
    assert convs == {'vit.patch.3.weight', 'vit.patch.6.weight', 'vit.patch.9.weight'}


def test_configure_optimizers_refuses_a_misspelt_component():
    """lr_scale={'vt': 2.0} would train the ViT at 1x without a word; the blind model still takes train.py's four."""
    with pytest.raises(ValueError, match=r"lr_scale names \['vt'\]: the components are .*vit"):
        configure_optimizers(make_model(), 0.1, 1e-3, (0.9, 0.95), 'cpu', lr_scale={'vt': 2.0})
    configure_optimizers(make_model(fusion='none'), 0.1, 1e-3, (0.9, 0.95), 'cpu',
                         lr_scale={'vit': 2.0, 'proj': 1.0, 'dec': 1.0, 'head': 1.0})


@pytest.mark.parametrize('shape', [(3, 16, 48), (2, 40, 8)])
def test_orthogonalize_flattens_the_spectrum(shape):
    """Polar Express takes matrices whose singular values span 1000x to ones within [0.75, 1.2], wide or tall (one
    fixed quintic leaves the smallest near 0.4), keeping the singular vectors (the sign of G's projection on its own
    top direction stays positive)."""
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(shape[0], shape[1], shape[1]))
    V, _ = torch.linalg.qr(torch.randn(shape[0], shape[2], shape[2]))
    k = min(shape[1:])
    s = torch.logspace(0, -3, k)                                               # (k,) singular values 1 .. 1e-3
    G = U[:, :, :k] * s @ V[:, :, :k].mT                                       # (K, m, n)
    sv = torch.linalg.svdvals(orthogonalize(G).float())                        # (K, k)
    assert sv.min() > 0.75 and sv.max() < 1.2
    top = (U[:, :, :1].mT @ orthogonalize(G).float() @ V[:, :, :1]).flatten()  # (K,)
    assert (top > 0.5).all()


def test_muon_matches_torch_reference(monkeypatch):
    """tvlm.Muon, which orthogonalises matrices of one shape together across its groups, steps like torch.optim.Muon
    (torch >= 2.9) with the AdamW-matched scale, matrix by matrix (a conv's filters as their flattened matrix):
    momentum, Nesterov, weight decay, each group's lr and all, given torch's five steps of one fixed quintic in place
    of Polar Express's."""
    if not hasattr(torch.optim, 'Muon'):
        pytest.skip('torch.optim.Muon arrived in torch 2.9')
    monkeypatch.setattr(tvlm, 'POLAR_EXPRESS', ((3.4445, -4.7750, 2.0315),) * 5)
    torch.manual_seed(0)
    shapes = [(16, 32), (16, 32), (8, 4, 3, 3), (16, 32), (32, 8)]           # the conv's filters flattened: (8, 36)
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone().flatten(1)) for p in ours]
    groups = lambda ps: [{'params': ps[:3], 'weight_decay': 0.1}, {'params': ps[3:], 'weight_decay': 0.1, 'lr': 0.01}]
    opt_ours = Muon(groups(ours), lr=0.02)                                    # one stack of (16, 32) from both groups
    opt_ref = torch.optim.Muon(groups(ref), lr=0.02, adjust_lr_fn='match_rms_adamw')
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for a, b, g in zip(ours, ref, grads):
            a.grad, b.grad = g.clone(), g.flatten(1).clone()
        opt_ours.step()
        opt_ref.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.flatten(1), b, atol=2e-3, rtol=0)


def test_get_lr_warmup_cosine_floor():
    """The schedule rises during warmup, peaks at lr, decays monotonically by a cosine to min_lr, then stays there."""
    lr, min_lr, warm, decay = 1e-3, 1e-4, 10, 110
    f = lambda it: get_lr(it, warm, decay, lr, min_lr)
    ramp = [f(it) for it in range(warm + 1)]
    assert 0 < ramp[0] and all(a < b for a, b in zip(ramp, ramp[1:]))
    assert f(warm) == pytest.approx(lr)
    tail = [f(it) for it in range(warm, decay + 1)]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    assert f((warm + decay) // 2) == pytest.approx((lr + min_lr) / 2)
    assert f(decay) == pytest.approx(min_lr)
    assert all(f(it) == min_lr for it in [decay + 1, 10 * decay])
    assert get_lr(0, 0, decay, lr, min_lr) == pytest.approx(lr)


def test_pick_device_resolves_auto_and_keeps_a_named_device(monkeypatch):
    """'auto' picks the fastest device here; a named one is kept if this machine has it, else (or if it is not a
    device name) the script exits in one line."""
    for cuda, mps, expected in ((2, True, 'cuda'), (0, True, 'mps'), (0, False, 'cpu')):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: mps)
        assert pick_device('auto') == expected and pick_device('cpu') == 'cpu'
        if cuda:
            assert pick_device('cuda:1') == 'cuda:1'
        for missing in ('cuda:2',) if cuda else ('cuda', 'cuda:1'):   # two GPUs: cuda:0 and cuda:1
            with pytest.raises(SystemExit, match=f"--device={missing}, but this torch .* sees no {missing} device"):
                pick_device(missing)
        if not mps:
            with pytest.raises(SystemExit, match="--device=mps, but this torch .* sees no mps device"):
                pick_device('mps')
    with pytest.raises(SystemExit, match="--device=gpu is not a device"):
        pick_device('gpu')
