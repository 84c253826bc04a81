"""
tvlm: a small PaliGemma-style vision-language model for questions about traffic scenes, in one file.

Read it top to bottom: config -> tokenizer -> image loading -> building blocks (RMSNorm, RoPE, attention,
MLPs) -> the SigLIP-style vision encoder -> the Gemma-style decoder -> TVLM, which fuses the two and
answers, with a classifier or in words -> optimizer, learning-rate schedule, FLOP count.

Papers: ViT (arXiv 2010.11929), SigLIP (2303.15343), RoPE (2104.09864), GQA (2305.13245),
RMSNorm (1910.07467), gated GELU MLPs (2002.05202), Gemma (2403.08295), PaliGemma (2407.07726).

Shape legend, used in every comment below:
  N  distinct images in a batch       B  questions in a batch (several may share one image)
  Hi, Wi  image height and width      p  patch size; P = (Hi/p)*(Wi/p) image tokens
  T  text tokens                      S  keys attended to (T, P or P+T)
  C  width (vit_width or dec_width)   H, Hkv  query heads, key/value heads   D  head dim = C / H
  A  answer classes                   V  vocabulary size
"""
import math
import os
import pickle
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

if tuple(int(v) for v in re.findall(r'\d+', torch.__version__)[:2]) < (2, 5):  # SDPA's enable_gqa arrived in 2.5
    raise ImportError(f"tvlm needs torch >= 2.5, this is torch {torch.__version__} ---> HINT: pip install 'torch>=2.5'")

# -----------------------------------------------------------------------------
# Configuration

@dataclass
class TVLMConfig:
    # image: 16:9 dash-cam frames stored at 144x256 keep the aspect of BDD100K's 720x1280
    img_h: int = 144
    img_w: int = 256
    patch: int = 16
    # () = SigLIP's patchify conv; channels such as (16, 32, 64, 128) = a conv stem of stride-2 3x3 convs,
    # one per halving down to the patch grid, which learns small objects far faster from scratch (arXiv 2106.14881)
    stem: tuple = ()
    # vision encoder (SigLIP-style ViT)
    vit_width: int = 128
    vit_depth: int = 4
    vit_heads: int = 4
    vit_mlp: int = 512
    # text decoder (Gemma-style)
    dec_width: int = 128
    dec_depth: int = 2
    dec_heads: int = 4
    dec_kv_heads: int = 2            # < dec_heads: grouped-query attention; == dec_heads: plain multi-head
    dec_mlp: int = 512
    vocab_size: int = 128
    max_q_len: int = 24              # question tokens, <bos> and <eos> included
    # how the model answers: 'classify' = a linear head over n_answers classes on the question's <eos>; 'generate' =
    # the tied LM head writes "answer : reason <eos>" after the question, as PaliGemma writes its suffix
    answer: str = 'classify'
    n_answers: int = 16
    max_answer_len: int = 12         # generate: answer and reason tokens, the closing <eos> included
    # how the image enters the decoder: 'cross' attends to image tokens from every block, 'prefix' puts them in
    # front of the question (PaliGemma), 'both' does both, 'none' never looks (the question-only ablation)
    fusion: str = 'cross'
    pos: str = 'rope'                # 'rope' or 'learned' (the no-RoPE ablation)
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    # > 0 adds a linear head on the image tokens that predicts which of n_patch_labels things (prepare.py's
    # PATCH_LABELS) each patch touches: training signal for the ViT before the answers can give it any
    n_patch_labels: int = 0
    patch_label_weights: tuple = ()  # () = every patch label weighs 1; else one weight per label
    # the training loss, all of it here so forward() returns what is trained (see TVLM.loss)
    label_smoothing: float = 0.0
    focal_gamma: float = 0.0         # > 0: focal loss (1 - p_true)^gamma x CE, down-weights easy answers
    answer_weights: tuple = ()       # () = every answer weighs 1; else one weight per answer (class imbalance)
    patch_weight: float = 1.0        # weight of the patch-label loss (when there is a patch head)
    # > 0: the look loss, cross-entropy from where the answer's rules looked (the patches of the objects that decided
    # it, prepare.look_targets) to where the question's summary token looks in each cross-attention layer: the
    # decoder is told where to find what the question asks about, instead of finding out from yes and no alone
    look_weight: float = 0.0
    # generate: the first answer word (the one that decides: yes, no, 3, red, can't) counts this many times in the
    # token mean; 1 is PaliGemma's plain mean, where a reason's half-dozen words outweigh the answer
    first_word_weight: float = 1.0
    # out of training, score answers on the image and on its mirror image with 'left' and 'right' swapped in the
    # question, and average the two views' probabilities (test-time augmentation; the question rules are
    # mirror-symmetric, so both ask the same thing): twice the inference, for two nearly independent guesses.
    # generate(): the words it writes come from the image as given
    mirror: bool = False

    def __post_init__(self):
        sizes = ('img_h', 'img_w', 'patch', 'vit_width', 'vit_depth', 'vit_heads', 'vit_mlp', 'dec_width', 'dec_depth',
                 'dec_heads', 'dec_kv_heads', 'dec_mlp', 'vocab_size', 'max_q_len', 'n_answers', 'max_answer_len')
        small = [f"{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
        if small or not all(isinstance(c, int) and c >= 1 for c in self.stem):   # before the checks that divide by them
            raise ValueError(f"invalid TVLMConfig: {', '.join(small) or f'stem={self.stem}'}: sizes, depths, head "
                             f"counts and stem channels must be whole numbers of 1 or more")
        checks = [
            (self.img_h % self.patch == 0 and self.img_w % self.patch == 0,
             f"image {self.img_h}x{self.img_w} is not divisible by patch {self.patch}"),
            (not self.stem or 2 ** len(self.stem) == self.patch,
             f"a stem of {len(self.stem)} stride-2 convs shrinks by {2 ** len(self.stem)}, not by patch={self.patch}"),
            (self.vit_width % self.vit_heads == 0, f"vit_width={self.vit_width} not divisible by vit_heads={self.vit_heads}"),
            (self.dec_width % self.dec_heads == 0, f"dec_width={self.dec_width} not divisible by dec_heads={self.dec_heads}"),
            (self.dec_heads % self.dec_kv_heads == 0, f"dec_heads={self.dec_heads} not divisible by dec_kv_heads={self.dec_kv_heads}"),
            ((self.dec_width // self.dec_heads) % 2 == 0, f"decoder head dim {self.dec_width // self.dec_heads} must be even for RoPE"),
            (self.fusion in ('cross', 'prefix', 'both', 'none'), f"fusion={self.fusion!r} must be 'cross', 'prefix', 'both' or 'none'"),
            (self.pos in ('rope', 'learned'), f"pos={self.pos!r} must be 'rope' or 'learned'"),
            (0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
            (0.0 <= self.label_smoothing < 1.0, f"label_smoothing={self.label_smoothing} must be in [0, 1)"),
            (min(self.focal_gamma, self.patch_weight, self.look_weight, self.first_word_weight, *self.answer_weights,
                 *self.patch_label_weights) >= 0, "focal_gamma, the loss weights and the answer and patch-label "
                                                  "weights must be >= 0"),
            (len(self.answer_weights) in (0, self.n_answers), f"{len(self.answer_weights)} answer_weights for {self.n_answers} answers"),
            (len(self.patch_label_weights) in (0, self.n_patch_labels),
             f"{len(self.patch_label_weights)} patch_label_weights for {self.n_patch_labels} patch labels"),
            (self.answer in ('classify', 'generate'), f"answer={self.answer!r} must be 'classify' or 'generate'"),
            (not self.look_weight or self.image_cross, f"look_weight teaches cross-attention: fusion={self.fusion!r} has none"),
            # both reweight answer classes, which a written answer does not have: refused, not silently dropped
            (self.answer == 'classify' or not self.answer_weights and not self.focal_gamma,
             "answer='generate' writes answers as words: answer_weights (class_weights) and focal_gamma need answer='classify'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid TVLMConfig: {msg}")

    @property
    def n_patches(self):
        return (self.img_h // self.patch) * (self.img_w // self.patch)

    # the one place that decides how the image reaches the decoder; everything else asks these two
    @property
    def image_prefix(self):
        return self.fusion in ('prefix', 'both')

    @property
    def image_cross(self):
        return self.fusion in ('cross', 'both')

    @property
    def max_text_len(self):  # the text positions the decoder has tables for: the question, and a written answer
        return self.max_q_len + (self.max_answer_len if self.answer == 'generate' else 0)

# -----------------------------------------------------------------------------
# Tokenizer: word level, because the questions come from a few hundred templates and a word is the
# unit a reader can see in an attention map. Ids 0-3 are fixed: 0 pads, so a mask is just `ids != 0`.

CANT = "can't answer"   # the abstention answer (prepare.py's ANSWERS hold it; see TVLM.unknown_words)


class Tokenizer:
    """Word-level tokenizer: lower-cased words and punctuation marks, <pad>=0 <unk>=1 <bos>=2 <eos>=3."""
    specials = ['<pad>', '<unk>', '<bos>', '<eos>']
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words):
        self.itos = list(self.specials) + [w for w in words if w not in self.specials]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, corpus):
        return cls(sorted({w for text in corpus for w in cls.split(text)}))  # sorted: same corpus, same ids

    @staticmethod
    def split(text):
        return re.findall(r"[^\W_]+(?:'[^\W_]+)?|\S", text.lower())   # words (any alphabet), or one mark each

    def __len__(self):
        return len(self.itos)

    def encode(self, text, max_len):
        """str -> (int64[max_len] ids, bool[max_len] mask); truncates long text but always keeps <eos>."""
        ids = [self.stoi.get(w, self.unk_id) for w in self.split(text)][:max_len - 2]
        ids = [self.bos_id] + ids + [self.eos_id]
        out = np.zeros(max_len, dtype=np.int64)
        out[:len(ids)] = ids
        return out, out != self.pad_id

    @staticmethod
    def question_end(tokens):
        """int64[B]: where each sequence's question ends, its first <eos> (an answer may follow in generate mode)."""
        return (tokens == Tokenizer.eos_id).int().argmax(1)

    def unknown(self, text):
        """The words of text that are not in the vocabulary (encode() reads each as <unk>)."""
        return [w for w in self.split(text) if w not in self.stoi]

    def decode(self, ids):
        words = [self.itos[i] if 0 <= i < len(self.itos) else '<unk>' for i in ids]
        words = [w for w in words if w not in ('<pad>', '<bos>', '<eos>')]
        return re.sub(r" ([?.,!:])", r"\1", ' '.join(words))

    def to_dict(self):
        return {'itos': self.itos}

    @classmethod
    def from_dict(cls, d):
        if d['itos'][:4] != cls.specials:  # a ValueError, not an assert: it reads a file, and python -O drops asserts
            raise ValueError(f"not a tvlm tokenizer: first tokens are {d['itos'][:4]}")
        return cls(d['itos'][4:])


def mirror_tables(tokenizer, answers):
    """Token and answer permutations that swap 'left' and 'right' (identity elsewhere). The question rules are
    symmetric about the image's vertical midline, so a mirrored image with these swaps applied to its question
    and answer is another correct example (train.py's hflip, TVLM's mirror, eval.py's consistency check)."""
    tok, ans = np.arange(len(tokenizer)), np.arange(len(answers))
    for a, b in (('left', 'right'), ('right', 'left')):
        if a in tokenizer.stoi and b in tokenizer.stoi:
            tok[tokenizer.stoi[a]] = tokenizer.stoi[b]
        if a in answers and b in answers:
            ans[answers.index(a)] = answers.index(b)
    return tok, ans

# -----------------------------------------------------------------------------
# Images: one function turns any picture into the model's input, used by prepare.py and by answer()
# alike, so a photo at inference time goes through exactly the pixels path the training data did.

def orientation(img):
    """A PIL image's EXIF orientation: 1 as stored; 2-8 a viewer flips or turns it (phones store photos sideways),
    5-8 by 90 degrees, so its width and height swap."""
    return img.getexif().get(0x0112, 1)


def load_image(src, img_h, img_w):
    """path | PIL.Image | uint8[H, W] | uint8[H, W, 3 or 4] -> uint8[img_h, img_w, 3]: centre-crop to the
    target aspect, then resize; a photo is first turned upright as its EXIF says. For JPEG files, draft mode decodes
    straight at 1/2, 1/4 or 1/8 scale."""
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or not (src.ndim == 2 or src.ndim == 3 and src.shape[2] in (3, 4)):
            raise ValueError(f"an image array must be uint8 HxW, HxWx3 or HxWx4, not {src.dtype} {src.shape} "
                             f"---> HINT: one image at a time, 0-255 as np.uint8, CHW .transpose(1, 2, 0)")
        img = Image.fromarray(src)
    elif isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (str, os.PathLike)) or hasattr(src, 'read'):
        img = Image.open(src)
    else:
        raise TypeError(f"an image is a path, a file, a PIL image or a uint8 numpy array, not {type(src).__name__} "
                        f"---> HINT: a torch tensor: .numpy(); bytes of a file: io.BytesIO(data)")
    if min(img.size) < 1 or img.mode == 'F':  # 'F': float pixels, whose range no one knows
        raise ValueError(f"cannot read a {img.size[0]}x{img.size[1]} image of mode {img.mode} as a picture ---> HINT: "
                         f"pass 8-bit pixels (uint8, 0-255)")
    turn = orientation(img)
    if img is not src and img.format == 'JPEG':  # a file: draft picks the largest reduction that stays >= the
        img.draft('RGB', (img_h, img_w) if turn >= 5 else (img_w, img_h))   # target size, as the file stores it
    if turn != 1:  # turned as a viewer shows it
        img = ImageOps.exif_transpose(img)
    if img.mode in ('I', 'I;16', 'I;16B', 'I;16L'):  # 16-bit greyscale: to 8 bits (convert() would clip it to white);
        px = np.asarray(img, dtype=np.int64)          # mode 'I' holds 32-bit ints, which may be 8-bit values
        img = Image.fromarray(np.clip(px >> 8 if img.mode != 'I' or px.max() > 255 else px, 0, 255).astype(np.uint8))
    if img.mode != 'RGB':
        img = img.convert('RGBA').convert('RGB') if img.mode == 'P' else img.convert('RGB')
    W, H = img.size
    if W * img_h > H * img_w:      # too wide: crop the sides
        cw = round(H * img_w / img_h)
        box = ((W - cw) // 2, 0, (W - cw) // 2 + cw, H)
    else:                          # too tall: crop top and bottom
        ch = round(W * img_h / img_w)
        box = (0, (H - ch) // 2, W, (H - ch) // 2 + ch)
    img = img.resize((img_w, img_h), Image.BILINEAR, box=box, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays

# -----------------------------------------------------------------------------
# Building blocks

class RMSNorm(nn.Module):
    """RMSNorm (arXiv 1910.07467) with Gemma's (1 + weight) scale, so a zero-initialised weight is the identity."""
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        # in fp32 even under bf16 autocast: the mean of squares loses too many bits in 8-bit mantissas
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).type_as(x)


def rope_cache(seq_len, head_dim, theta=10000.0):
    """RoPE tables (arXiv 2104.09864): cos, sin float32[seq_len, head_dim/2] for positions 0..seq_len-1."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)   # (D/2,)
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)                  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each pair (x[i], x[i + D/2]) by its position's angle: x (B, H, T, D), cos/sin (T, D/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)                                             # 2 x (B, H, T, D/2)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)  # (B, H, T, D)


def per_question(x, k):
    """(N, H, k*T, ...) with k questions per image folded into one sequence -> (N*k, H, T, ...), a row each."""
    return x.unflatten(2, (k, -1)).transpose(1, 2).flatten(0, 1)   # (N, H, k, T, ...) -> (N*k, H, T, ...)


class Attention(nn.Module):
    """Self- or cross-attention; grouped-query when n_kv_head < n_head (GQA, arXiv 2305.13245)."""
    def __init__(self, width, n_head, n_kv_head, bias=False, dropout=0.0):
        super().__init__()
        assert n_head % n_kv_head == 0, f"n_head={n_head} not divisible by n_kv_head={n_kv_head}"
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, width // n_head
        self.wq = nn.Linear(width, n_head * self.head_dim, bias=bias)
        self.wkv = nn.Linear(width, 2 * n_kv_head * self.head_dim, bias=bias)
        self.wo = nn.Linear(n_head * self.head_dim, width, bias=bias)
        self.dropout = dropout

    def forward(self, x, ctx=None, ctx_idx=None, rope=None, mask=None, probs=None, cache=None, q_rope=None):
        """x (B, T, C) attends to ctx (N, S, C) (default: x itself). ctx_idx (B,) picks each row's context, so
        keys and values are projected once per distinct image; an int k: the rows come k per context, in order.
        mask: 'causal' or bool (T, S) or (B, 1, T, S), True = may attend. rope: the (cos, sin) of the keys' positions,
        and of the queries' unless q_rope gives theirs (queries from some rows of ctx, as in the last decoder block).
        A list passed as `probs` takes the explicit path and receives the attention weights (B, H, T, S).
        cache (generate()): a dict that keeps this layer's keys and values between decoding steps. Self-attention
        appends the new tokens' (`rope` holds their absolute positions); cross-attention fills it once, then reads."""
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)              # (B, H, T, D)
        if ctx is not None and cache:  # the image's keys and values, projected at the first step
            k, v = cache['k'], cache['v']                                                 # (B, Hkv, S, D)
        else:
            ctx = x if ctx is None else ctx
            N, S, _ = ctx.shape
            k, v = self.wkv(ctx).view(N, S, 2, self.n_kv_head, self.head_dim).unbind(2)   # 2 x (N, S, Hkv, D)
            k, v = k.transpose(1, 2), v.transpose(1, 2)                                   # (N, Hkv, S, D)
            if isinstance(ctx_idx, int):  # k rows per context: one query sequence per image, no copies of k and v
                q = q.view(N, ctx_idx, self.n_head, T, self.head_dim).transpose(1, 2)      # (N, H, k, T, D)
                q = q.reshape(N, self.n_head, ctx_idx * T, self.head_dim)                 # (N, H, k*T, D)
                # from here to per_question below, read N for B and k*T for T in the shape comments
            elif ctx_idx is not None:
                # index_select, not k[ctx_idx]: its backward (index_add) was ~10x faster on CPU than indexing's
                k, v = k.index_select(0, ctx_idx), v.index_select(0, ctx_idx)             # (B, Hkv, S, D)
            if rope is not None:  # positions only mean something when q and k index the same sequence
                q, k = apply_rope(q, *(q_rope or rope)), apply_rope(k, *rope)
            if cache is not None:
                if cache:  # self-attention: the earlier tokens' keys and values, then the new ones'
                    k, v = torch.cat([cache['k'], k], dim=2), torch.cat([cache['v'], v], dim=2)  # (B, Hkv, S, D)
                cache.update(k=k, v=v)
        causal = isinstance(mask, str)
        assert not causal or mask == 'causal', f"unknown mask {mask!r}"
        p_drop = self.dropout if self.training else 0.0
        if probs is None:  # enable_gqa: query head h reads kv head h // (H/Hkv) without copying k and v
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                               dropout_p=p_drop, enable_gqa=True)            # (B, H, T, D)
        else:  # the same computation written out, to hand the weights to the look loss, eval.py and viz.py
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)                 # (B, H, S, D)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)                 # (B, H, S, D)
            if causal:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()          # (T, S)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)                      # (B, H, T, S)
            if mask is not None:
                att = att.masked_fill(~mask, float('-inf'))
            att = att.softmax(dim=-1)
            probs.append(per_question(att, ctx_idx) if isinstance(ctx_idx, int) else att)
            y = F.dropout(att, p_drop) @ v                                                 # (B, H, T, D)
        if isinstance(ctx_idx, int):  # back to one row per question: the same as gathering k and v per row
            y = per_question(y, ctx_idx)                                                   # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))     # (B, T, C)


class MLP(nn.Module):
    """ViT MLP (fc -> GELU -> proj), or with gated=True Gemma's GeGLU: proj(gelu(gate(x)) * up(x))."""
    def __init__(self, width, hidden, gated, bias=False, dropout=0.0):
        super().__init__()
        self.fc = nn.Linear(width, (2 if gated else 1) * hidden, bias=bias)  # gate and up in one matmul
        self.proj = nn.Linear(hidden, width, bias=bias)
        self.gated, self.dropout = gated, nn.Dropout(dropout)

    def forward(self, x):
        h = self.fc(x)                                                       # (B, T, hidden or 2*hidden)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)                                    # 2 x (B, T, hidden)
            h = F.gelu(gate, approximate='tanh') * up
        else:
            h = F.gelu(h, approximate='tanh')
        return self.dropout(self.proj(h))                                    # (B, T, C)

# -----------------------------------------------------------------------------
# Vision encoder (SigLIP-style ViT): patches -> tokens, pre-norm blocks, final LayerNorm, no CLS token

class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.vit_width, eps=cfg.norm_eps)
        self.attn = Attention(cfg.vit_width, cfg.vit_heads, cfg.vit_heads, bias=True, dropout=cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.vit_width, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.vit_width, cfg.vit_mlp, gated=False, bias=True, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, probs=None):
        x = x + self.drop(self.attn(self.norm1(x), probs=probs))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """uint8[N, Hi, Wi, 3] images -> float[N, P, vit_width] image tokens (arXiv 2010.11929, 2303.15343)."""
    def __init__(self, cfg, mean=(128.0,) * 3, std=(64.0,) * 3):
        super().__init__()
        # normalising inside the model lets the data path move uint8 (4x fewer bytes than float32)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))  # (1, 3, 1, 1)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))    # (1, 3, 1, 1)
        if cfg.stem:  # conv -> BatchNorm -> ReLU, each halving the image, then a 1x1 conv to the ViT width
            chans = (3,) + tuple(cfg.stem)
            layers = []
            for a, b in zip(chans, chans[1:]):
                layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
            self.patch = nn.Sequential(*layers, nn.Conv2d(chans[-1], cfg.vit_width, kernel_size=1))
        else:  # one p x p conv with stride p: each patch's pixels, flattened, times a matrix
            self.patch = nn.Conv2d(3, cfg.vit_width, kernel_size=cfg.patch, stride=cfg.patch)
        # learned 2-D position embedding, one vector per cell of the (Hi/p, Wi/p) grid, stored flat
        self.pos = nn.Parameter(torch.randn(1, cfg.n_patches, cfg.vit_width) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.vit_depth))
        self.norm = nn.LayerNorm(cfg.vit_width, eps=cfg.norm_eps)
        self.cfg = cfg

    def forward(self, images, probs=None):
        N, Hi, Wi, _ = images.shape
        if (Hi, Wi) != (self.cfg.img_h, self.cfg.img_w) or images.dtype != torch.uint8:
            raise ValueError(f"images are {images.dtype} {Hi}x{Wi} but the model takes uint8 {self.cfg.img_h}x"
                             f"{self.cfg.img_w} (0-255): resize them with tvlm.load_image, or re-run prepare.py with "
                             f"this --img_h/--img_w")
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std      # (N, 3, Hi, Wi)
        x = self.patch(x.to(self.pos.dtype))                                 # (N, C, Hi/p, Wi/p)
        x = x.flatten(2).transpose(1, 2) + self.pos                          # (N, P, C), row-major over the grid
        for block in self.blocks:
            x = block(x, probs=probs)
        return self.norm(x)                                                  # (N, P, C)

# -----------------------------------------------------------------------------
# Text decoder (Gemma-style): scaled embeddings, blocks of causal self-attention with RoPE and GQA,
# cross-attention to the image tokens, gated MLP; RMSNorm before each, tied LM head.

class DecoderBlock(nn.Module):
    """Three pre-norm residuals in turn: x += self_attn(norm(x)); text rows += cross_attn(norm(text), image); x +=
    mlp(norm(x)). Cross-attention is there only when the fusion has it."""
    def __init__(self, cfg):
        super().__init__()
        C = cfg.dec_width
        self.norm1 = RMSNorm(C, cfg.norm_eps)
        self.attn = Attention(C, cfg.dec_heads, cfg.dec_kv_heads, dropout=cfg.dropout)
        self.norm2 = RMSNorm(C, cfg.norm_eps) if cfg.image_cross else None
        self.cross = Attention(C, cfg.dec_heads, cfg.dec_kv_heads, dropout=cfg.dropout) if cfg.image_cross else None
        self.norm3 = RMSNorm(C, cfg.norm_eps)
        self.mlp = MLP(C, cfg.dec_mlp, gated=True, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, ctx, ctx_idx, rope, mask, out, P=0, cache=None, only=None):
        """cache: this layer's {'self': {}, 'cross': {}} of key/value dicts while generating (see Attention).
        only: int64[B], one row per sequence, the only one computed (attending to every row up to it): x (B, T, C)
        -> (B, 1, C). For the last block of a classifier, whose other rows no one reads."""
        kv_self, kv_cross = (None, None) if cache is None else (cache['self'], cache['cross'])
        h = q = self.norm1(x)                                                  # (B, T, C)
        q_rope = None
        if only is not None:  # that row's query against every row's key and value
            rows, pos = torch.arange(len(x), device=x.device), torch.arange(x.shape[1], device=x.device)
            x, q = x[rows, only][:, None], h[rows, only][:, None]                # 2 x (B, 1, C)
            mask = (pos <= only[:, None])[:, None, None]                         # (B, 1, 1, T): causal for that row
            if rope is not None:
                q_rope = tuple(t[only][:, None, None] for t in rope)             # 2 x (B, 1, 1, D/2)
        x = x + self.drop(self.attn(q, ctx=None if only is None else h, rope=rope, mask=mask,
                                    probs=out and out['self_attn'], cache=kv_self, q_rope=q_rope))
        if self.cross is not None:  # only text rows ask the image; under 'both' the first P rows are the image
            t = x[:, P:]                                                       # (B, T, C)
            t = t + self.drop(self.cross(self.norm2(t), ctx=ctx, ctx_idx=ctx_idx, probs=out and out['cross_attn'],
                                         cache=kv_cross))
            x = torch.cat([x[:, :P], t], dim=1) if P else t                    # (B, P+T, C)
        return x + self.mlp(self.norm3(x))


def prefix_lm_mask(P, L, device=None):
    """bool[L, L], True = may attend: the image prefix sees itself in full, text sees the prefix and its past.
    For [img img img q q a] (P=3, L=6):
              i i i q q a
          i   1 1 1 0 0 0
          i   1 1 1 0 0 0
          i   1 1 1 0 0 0
          q   1 1 1 1 0 0
          q   1 1 1 1 1 0
          a   1 1 1 1 1 1
    Padding needs no mask of its own: pads come after the last real token, and causality hides them."""
    row = torch.arange(L, device=device).view(L, 1)                            # (L, 1)
    col = torch.arange(L, device=device).view(1, L)                            # (1, L)
    return (col < P) | (col <= row)                                            # (L, L)


class Decoder(nn.Module):
    """int64[B, T] tokens (+ image prefix and/or cross-attention context) -> float[B, T, dec_width] hidden states."""
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dec_width)
        self.max_len = cfg.max_text_len + (cfg.n_patches if cfg.image_prefix else 0)   # positions, prefix included
        if cfg.pos == 'learned':
            self.wpe = nn.Parameter(torch.randn(self.max_len, cfg.dec_width) * 0.02)
        else:  # computed once, not per step; not saved, since they follow from the config
            cos, sin = rope_cache(self.max_len, cfg.dec_width // cfg.dec_heads, cfg.rope_theta)
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.dec_depth))
        self.norm = RMSNorm(cfg.dec_width, cfg.norm_eps)

    def forward(self, tokens, prefix=None, ctx=None, ctx_idx=None, out=None, cache=None, only=None):
        """prefix: (B, P, C) image tokens put before the text; ctx: (N, P, C) image tokens for cross-attention.
        cache: generate()'s per-layer key/value dicts; once they hold the prompt (and prefix), `tokens` is only the
        newest token, at the position after the cached rows. only: int64[B], the one text row per question read
        after the decoder (a classifier's summary token): the last block computes it alone, and the output is
        (B, 1, C); without a prefix only."""
        x = self.embed(tokens) * math.sqrt(self.cfg.dec_width)                 # (B, T, C), Gemma's scaling
        P = 0 if prefix is None else prefix.shape[1]
        if P:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)                       # (B, P+T, C)
        past = cache[0]['self']['k'].shape[2] if cache and cache[0]['self'] else 0   # rows already cached
        assert not past or x.shape[1] == 1, f"after the prompt the cache takes one token a step, not {x.shape[1]}"
        L = past + x.shape[1]
        if L > self.max_len:
            raise ValueError(f"{L - self.max_len + self.cfg.max_text_len} text tokens, the model has positions for "
                             f"{self.cfg.max_text_len} (max_q_len={self.cfg.max_q_len}, <bos> and <eos> included)")
        rope = None
        if self.cfg.pos == 'learned':
            x = x + self.wpe[past:L]
        else:
            rope = (self.rope_cos[past:L], self.rope_sin[past:L])              # 2 x (L - past, D/2)
        # a new token after the cached rows may read all of them: no mask
        mask = None if past else prefix_lm_mask(P, L, x.device) if P else 'causal'
        assert only is None or not P, "only= needs text alone: with an image prefix, rows are not text positions"
        for i, block in enumerate(self.blocks):
            last = only if i == len(self.blocks) - 1 else None
            x = block(x, ctx, ctx_idx, rope, mask, out, P, None if cache is None else cache[i], last)
        return self.norm(x)[:, P:]                                             # (B, T, C), or (B, 1, C) with only

# -----------------------------------------------------------------------------
# The full model: ViT -> linear projection -> decoder (cross-attention and/or image prefix) -> answer classifier,
# or, with answer='generate', the tied LM head that writes the answer and its reason word by word

def answer_loss(logits, targets, label_smoothing=0.0, weight=None, focal_gamma=0.0):
    """Cross-entropy over answers (fp32 for a stable log-softmax), with the options imbalanced real data asks
    for: label smoothing, per-answer weights (A,), and the focal term (1 - p_true)^gamma (arXiv 1708.02002)."""
    loss = F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=label_smoothing, reduction='none')
    if focal_gamma > 0:
        p_true = logits.float().softmax(-1).gather(1, targets[:, None]).squeeze(1)   # (B,)
        loss = loss * (1 - p_true) ** focal_gamma
    # a weighted mean, as F.cross_entropy's own reduction does, so weights change emphasis, not the scale
    return loss.sum() / (weight[targets].sum() if weight is not None else len(targets))


def answer_targets(tokens):
    """Generate mode's next-token targets int64[B, T] for sequences int64[B, T] `<bos> question <eos> answer : reason
    <eos> <pad>..`: tokens[t+1] from the question's <eos> (PaliGemma's separator of prefix and suffix) up to the token
    before the closing <eos>, -100 (cross_entropy's ignore_index) elsewhere: only the answer and its reason are
    learned, as PaliGemma's mask_loss. For [bos is it night ? eos yes : it is dark eos pad], with - for -100:
        tokens   bos   is    it    night ?     eos   yes   :     it    is    dark  eos   pad
        targets  -     -     -     -     -     yes   :     it    is    dark  eos   -     -
    """
    eos = tokens == Tokenizer.eos_id
    assert eos.any(1).all(), "every sequence needs the question's <eos> before its answer"
    pos = torch.arange(tokens.shape[1], device=tokens.device)                 # (T,)
    first = Tokenizer.question_end(tokens)[:, None]                           # (B, 1) the question's <eos>
    last = (tokens != Tokenizer.pad_id).sum(1, keepdim=True) - 1              # (B, 1) the closing <eos>
    nxt = F.pad(tokens[:, 1:], (0, 1))                                        # (B, T) the token after each
    return torch.where((pos >= first) & (pos < last), nxt, -100)              # (B, T)


def load_checkpoint(path):
    """A train.py checkpoint as a dict, or a one-line ValueError / FileNotFoundError that says what is wrong.
    Tensors and plain values only (weights_only=True), so loading runs no code. Every script loads through here."""
    if not (isinstance(path, (str, os.PathLike)) or hasattr(path, 'read')):
        raise TypeError(f"a checkpoint is a path or a file, not {type(path).__name__}")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)   # a device to move to is the caller's choice
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path} ---> HINT: train one with `python train.py config/small.py`") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"{path} is a folder ---> HINT: pass the checkpoint file in it, e.g. {path}/ckpt.pt") from None
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, OSError) as e:
        if 'unsupported global' in str(e).lower():  # torch's safe unpickler names the class or function it refused
            raise ValueError(f"refusing to load {path}: it holds Python objects, not only tensors and plain values, "
                             f"so loading it could run code; tvlm checkpoints never do") from None
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or corrupt? {type(e).__name__})") from None
    missing = {'model', 'model_args', 'tokenizer', 'answers'} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise ValueError(f"{path} is not a tvlm checkpoint: it lacks {sorted(missing)}")
    args = ckpt['model_args']
    if 'blind' in args:  # checkpoints from before 'none' joined the fusions spelled it as a second knob
        args['fusion'] = 'none' if args.pop('blind') else args['fusion']
    return ckpt


class TVLM(nn.Module):
    """Answers a question about an image: uint8[N, Hi, Wi, 3] images + int64[B, T] questions -> float[B, A] logits,
    or with answer='generate' float[B, T, V] next-token logits over question + answer sequences."""
    def __init__(self, cfg, tokenizer=None, answers=None, mean=(128.0,) * 3, std=(64.0,) * 3):
        super().__init__()
        self.cfg, self.tokenizer, self.answers, self.temperature = cfg, tokenizer, answers, 1.0
        self.abstain_above = 1.0   # p(can't answer) past which the answer is "can't answer" (answer_logits); 1 = never
        sees = cfg.fusion != 'none'
        self.vit = ViT(cfg, mean, std) if sees else None
        self.proj = nn.Linear(cfg.vit_width, cfg.dec_width) if sees else None  # vision width -> text width
        self.dec = Decoder(cfg)
        self.head = nn.Linear(cfg.dec_width, cfg.n_answers) if cfg.answer == 'classify' else None
        self.patch_head = nn.Linear(cfg.vit_width, cfg.n_patch_labels) if sees and cfg.n_patch_labels else None
        # not a parameter and not saved: it follows from the config, which the checkpoint holds
        weight = torch.tensor(cfg.answer_weights, dtype=torch.float32) if cfg.answer_weights else None
        self.register_buffer('answer_weight', weight, persistent=False)
        self.register_buffer('patch_label_weight', torch.tensor(cfg.patch_label_weights or (1.0,) * cfg.n_patch_labels,
                                                                dtype=torch.float32), persistent=False)
        if cfg.mirror:  # the swaps that ask the mirror image the same question (forward); none without words
            tok, ans = (np.arange(cfg.vocab_size), np.arange(cfg.n_answers)) if tokenizer is None or answers is None \
                else mirror_tables(tokenizer, answers)                          # (bench.py's timing models)
            self.register_buffer('mirror_tokens', torch.from_numpy(tok), persistent=False)      # (V,)
            self.register_buffer('mirror_answers', torch.from_numpy(ans), persistent=False)     # (A,)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual projections scaled down by depth (GPT-2)
            if name.endswith(('wo.weight', 'mlp.proj.weight')):
                depth = cfg.vit_depth if name.startswith('vit.') else cfg.dec_depth
                nn.init.normal_(p, mean=0.0, std=p.shape[1] ** -0.5 / math.sqrt(2 * depth))
        if self.head is not None:  # zero head (big_vision head_zeroinit): every answer equally likely, loss = ln(A)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            # std 1/sqrt(fan_in) keeps a vector's scale through the matrix. GPT-2's fixed 0.02 suits width ~2500;
            # at width 128 each matrix shrank its input ~4x, the image reaches the summary token through three in a
            # row (proj, k/v, out), and their gradients started below AdamW's eps: only the question prior was learned
            nn.init.normal_(module.weight, mean=0.0, std=module.weight.shape[1] ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def describe(self):
        """One line with the size and the shapes that decide the cost of a step (train.py and bench.py print it)."""
        c = self.cfg
        answers = f"{c.n_answers} answers" if c.answer == 'classify' else f"answers written in <= {c.max_answer_len} tokens"
        return (f"model: {self.num_params() / 1e6:.2f}M parameters, fusion={c.fusion}, {c.n_patches} image tokens of "
                f"{c.img_h}x{c.img_w}, questions of <= {c.max_q_len} tokens, {c.vocab_size} words, {answers}, "
                f"{c.n_patch_labels} patch labels")

    def encode_image(self, images, image_idx=None, out=None):
        """-> (vis, prefix, ctx): the ViT's tokens float[N, P, vit_width], and what the decoder takes from them:
        prefix float[B, P, C] (one copy per question) and/or ctx float[N, P, C] (cross-attention, gathered per
        layer by image_idx), None where the fusion does not use it. The one place the image is routed."""
        if self.vit is None:
            return None, None, None
        vis = self.vit(images, probs=out and out['vit_attn'])                     # (N, P, vit_width)
        img = self.proj(vis)                                                      # (N, P, C)
        prefix = ctx = None
        if self.cfg.image_prefix:
            prefix = img if image_idx is None else img.repeat_interleave(image_idx, 0) if isinstance(image_idx, int) \
                else img.index_select(0, image_idx)                                   # (B, P, C)
        if self.cfg.image_cross:
            ctx = img                                                             # (N, P, C)
        return vis, prefix, ctx

    def forward(self, images, tokens, targets=None, image_idx=None, out=None, patch_targets=None, look_targets=None,
                mirrored=False):
        """images uint8[N, Hi, Wi, 3], tokens int64[B, T] (0 = pad), targets int64[B], image_idx int64[B]
        (question -> image row; None means N == B; an int k: k questions per image in image order, as train.py's
        batches come, so cross-attention need not copy keys and values per question), patch_targets float[N, Hi/p,
        Wi/p, n_patch_labels], look_targets float[B, Hi/p, Wi/p] (prepare.look_targets) -> (float[B, A] logits, the
        training loss of self.loss, or None without targets).
        answer='generate': tokens are whole sequences (see answer_targets), targets int64[B, T] with -100 where
        nothing is learned, and the logits float[B, T, V] predict each next token.
        A dict passed as `out` takes the explicit attention path and is filled with the attention maps (and 'vis',
        the ViT's tokens). With cfg.mirror, out of training, the logits are the log of the two views' averaged
        probabilities (`out` holds the image's own maps); mirrored=True is the inner call on the mirror image."""
        cfg = self.cfg
        if image_idx is None and len(images) != len(tokens):
            raise ValueError(f"{len(images)} images for {len(tokens)} questions: pass one image per question, or "
                             f"image_idx (each question's image row)")
        look = targets is not None and look_targets is not None and cfg.look_weight > 0
        wants_maps = out is not None
        if wants_maps:
            out.update(vit_attn=[], self_attn=[], cross_attn=[], grid=(cfg.img_h // cfg.patch, cfg.img_w // cfg.patch))
        elif look:  # the look loss needs the cross-attention weights; the ViT and self-attention keep their kernel
            out = {'vit_attn': None, 'self_attn': None, 'cross_attn': []}
        vis, prefix, ctx = self.encode_image(images, image_idx, out)
        if self.head is None:  # the question's <eos> writes the first answer word
            summary = Tokenizer.question_end(tokens)                           # (B,)
            h = self.dec(tokens, prefix, ctx, image_idx, out)                  # (B, T, C)
            logits = h @ self.dec.embed.weight.T                               # (B, T, V), tied to the embedding
        else:  # the summary token is the last real one (<eos>): in a causal decoder only it has read the whole question
            summary = (tokens != Tokenizer.pad_id).sum(1) - 1                  # (B,)
            # the classifier reads that row alone, so the last block computes it alone (~40% of the decoder's work),
            # unless a caller asked for every row's attention maps, or an image prefix shifts the rows
            only = summary if prefix is None and not wants_maps else None
            h = self.dec(tokens, prefix, ctx, image_idx, out, only=only)       # (B, 1 or T, C)
            h = h[:, 0] if only is not None else h[torch.arange(len(h), device=h.device), summary]   # (B, C)
            logits = self.head(h)                                              # (B, A)
        if cfg.mirror and not self.training and not mirrored:  # the mirror view's answers (or words) swapped back
            other = self(images.flip(2), self.mirror_tokens[tokens], image_idx=image_idx, mirrored=True)[0]
            swap = self.mirror_answers if self.head is not None else self.mirror_tokens
            own, swapped = logits.float().log_softmax(-1), other.float().log_softmax(-1)[..., swap]  # (B, A) or (B, T, V)
            logits = torch.stack([own, swapped]).logsumexp(0) - math.log(2)    # the log of the mean probability
        if out is not None:
            out.update(summary_idx=summary, prefix=0 if prefix is None else prefix.shape[1], vis=vis)
        looked = (out['cross_attn'], summary, look_targets) if look else None
        loss = None if targets is None else self.loss(logits, targets, vis, patch_targets, looked)
        return logits, loss

    def loss(self, logits, targets, vis=None, patch_targets=None, looked=None):
        """The training loss, the only one: answer_loss with the config's smoothing, weights and focal term (in
        generate mode: token cross-entropy, smoothed, a mean over the targets that are not -100 in which each
        answer's first word counts first_word_weight times), plus
        patch_weight x the patch-label loss when the model has a patch head and patch_targets are given, plus
        look_weight x the look loss when looked = (cross-attention weights per layer, summary rows, look targets)."""
        cfg = self.cfg
        if cfg.answer == 'generate':
            assert targets.shape == logits.shape[:2], f"targets {tuple(targets.shape)} for logits {tuple(logits.shape)}"
            # -100 targets are F.cross_entropy's ignore_index: the mean runs over the answer positions only
            ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), label_smoothing=cfg.label_smoothing,
                                 reduction='none').view_as(targets)                   # (B, T), 0 where -100
            answered = targets != -100                                               # (B, T)
            first = answered & (answered.cumsum(1) == 1)                             # (B, T) each row's answer word
            weight = answered + (cfg.first_word_weight - 1) * first                  # (B, T) float
            loss = (ce * weight).sum() / weight.sum()
        else:
            loss = answer_loss(logits, targets, cfg.label_smoothing, self.answer_weight, cfg.focal_gamma)
        if patch_targets is not None and self.patch_head is not None and cfg.patch_weight:
            # multi-label: a binary cross-entropy per label, weighted, summed over a patch's K labels, averaged over
            # patches; none for a target < 0, which is not known (the weather of a frame BDD left undefined)
            target = patch_targets.flatten(1, 2)                                      # (N, P, K)
            weight = (target >= 0) * self.patch_label_weight                          # (N, P, K)
            bce = F.binary_cross_entropy_with_logits(self.patch_head(vis).float(), target.clamp_min(0), weight,
                                                     reduction='none')                  # (N, P, K)
            loss = loss + cfg.patch_weight * bce.sum(-1).mean()
        if looked is not None:
            maps, summary, where = looked
            where = where.flatten(1).float()                                    # (B, P), rows sum to 1 or 0
            asked = where.sum(1) > 0                                            # (B,) questions with referents
            rows = torch.arange(len(summary), device=summary.device)           # (B,)
            for att in maps:  # the summary token's weights, heads averaged (a head may look elsewhere); a one-row
                # map is the last block's when it computed the summary row alone (Decoder's only=)
                att = att[rows, :, summary] if att.shape[2] > 1 else att[:, :, 0]   # (B, H, P)
                att = att.float().mean(1)                                           # (B, P)
                ce = -(where * att.clamp_min(1e-9).log()).sum(1)                # (B,)
                loss = loss + cfg.look_weight * ce[asked].sum() / max(int(asked.sum()), 1) / len(maps)
        return loss

    @torch.no_grad()
    def generate(self, images, prompts, max_new_tokens, image_idx=None, use_cache=True, temperature=0.0):
        """Greedy decoding with the tied LM head (sampling when temperature > 0): images uint8[N, Hi, Wi, 3], unpadded
        prompts int64[B, T] of one length (a question up to its <eos>, for an answer) -> int64[B, T + n], n <=
        max_new_tokens: it stops once every row has written <eos>, and pads a finished row after its <eos>.
        use_cache keeps each layer's keys and values (Attention), so a step runs one token through the decoder;
        use_cache=False reruns the whole sequence each step, the reference the cache is tested against.
        answer='generate' trains the LM head (train with --answer=generate); a classify-mode checkpoint trained its
        embedding only as an input, not as the head that writes, so from it this emits noise."""
        B, T = prompts.shape
        if not ((prompts > Tokenizer.pad_id) & (prompts < self.cfg.vocab_size)).all():   # not the embedding's IndexError
            raise ValueError(f"generate() takes unpadded prompts of one length, whose token ids must be in [1, "
                             f"{self.cfg.vocab_size}): encode them with this model's tokenizer")
        if T + max_new_tokens > self.cfg.max_text_len:
            raise ValueError(f"prompt + new tokens exceed {self.cfg.max_text_len} positions")
        if max_new_tokens < 0 or temperature < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} and temperature={temperature} must be >= 0")
        if isinstance(image_idx, int):  # k prompts per image: as indices, since after the prompt a step is one row each
            image_idx = torch.arange(len(images), device=prompts.device).repeat_interleave(image_idx)   # (B,)
        _, prefix, ctx = self.encode_image(images, image_idx)
        cache = [{'self': {}, 'cross': {}} for _ in self.dec.blocks] if use_cache else None
        tokens, x = prompts, prompts
        done = torch.zeros(B, dtype=torch.bool, device=prompts.device)
        for _ in range(max_new_tokens):
            logits = self.dec(x, prefix, ctx, image_idx, cache=cache)[:, -1] @ self.dec.embed.weight.T  # (B, V)
            nxt = logits.argmax(-1) if temperature == 0 else torch.multinomial((logits / temperature).softmax(-1), 1)[:, 0]
            nxt = nxt.masked_fill(done, Tokenizer.pad_id)                       # (B,)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)                   # (B, T+1)
            done |= nxt == Tokenizer.eos_id
            if done.all():
                break
            # the cache holds the prompt and the image prefix now: only the new token goes in
            x, prefix = (nxt[:, None], None) if use_cache else (tokens, prefix)  # (B, 1) or (B, T+1)
        return tokens

    @classmethod
    def from_checkpoint(cls, path, device='cpu'):
        """A ready-to-answer model, in eval mode, from a train.py checkpoint: its path, or the dict load_checkpoint
        returned (for a caller that also reads the checkpoint's other entries)."""
        ckpt = path if isinstance(path, dict) else load_checkpoint(path)
        try:
            model = cls(TVLMConfig(**ckpt['model_args']), Tokenizer.from_dict(ckpt['tokenizer']), ckpt['answers'])
            model.load_state_dict(ckpt['model'])  # strict: a missing or renamed weight must fail loudly
        except KeyError as e:  # a dict that did not come through load_checkpoint
            raise ValueError(f"not a tvlm checkpoint: it lacks {e}") from None
        except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: weights of other names or shapes
            why = ' '.join(str(e).split())[:300]   # torch's first line alone ("Error(s) in loading...:") says nothing
            raise ValueError(f"the checkpoint's weights do not fit its own model_args: {why}") from None
        model.temperature = float(ckpt.get('temperature', 1.0))
        if not model.temperature > 0:
            raise ValueError(f"the checkpoint's temperature is {model.temperature}; logits are divided by it, so "
                             f"it must be > 0 ---> HINT: eval.py --save_temperature=True fits and saves one")
        model.abstain_above = float(ckpt.get('abstain_above', 1.0))
        return model.to(device).eval()

    # Abstention, three ways. The trained "can't answer" class covers questions in known words that no rule answers
    # ("What color is the car?") and generalises to other such wordings. Where it generalises less (held-out "What
    # time is it?" went to "Is it night time?"'s yes/no), it still often gives "can't answer" more probability than
    # any in-scope val question gets: above that maximum (abstain_above, which train.py fits on val's in-scope
    # questions in every phrasing, so that a new wording of a question it can answer does not trip it) it abstains.
    # A word it never saw reaches it as <unk>, whose embedding learned nothing ("Is it snowing?" -> "yes"): such
    # questions get "can't answer" by rule.
    def answer_logits(self, logits, tokens, rules=True):
        """float[B, A], a score per answer class in either mode, from forward's logits: the classifier's own, or in
        generate mode the LM's logits for each answer's first word right after the question's <eos> (no two answers
        share a first word; any answer written after it is ignored), so every answer-class metric applies to both
        modes. With rules, questions with unknown words (see unknown_words), and those whose p(can't answer) is above
        abstain_above, score "can't answer"."""
        if self.cfg.answer == 'generate':
            last = Tokenizer.question_end(tokens)                                # (B,) the question's <eos>
            first = [self.tokenizer.stoi[self.tokenizer.split(a)[0]] for a in self.answers]
            logits = logits[torch.arange(len(tokens), device=tokens.device), last][:, first]   # (B, A)
        if not rules or self.answers is None or CANT not in self.answers:
            return logits
        cant, logits = self.answers.index(CANT), logits.float()   # fp32: in bf16 the lift of 1e-3 would round away
        # over the threshold, "can't answer" is lifted just above the top answer: the model's pick, without a
        # certainty it does not have (the other answers keep their logits: NLL and T see a near tie, not a rout)
        judged = logits.softmax(-1)[:, cant] > self.abstain_above                              # (B,)
        is_cant = torch.arange(logits.shape[1], device=logits.device) == cant                   # (A,)
        logits = torch.where(judged[:, None] & is_cant, logits.max(-1, keepdim=True).values + 1e-3, logits)  # (B, A)
        sure = torch.full_like(logits, -1e4)                                     # finite: NLL and AUC stay numbers
        sure[:, cant] = 0                                                        # (B, A) "can't answer", p ~ 1
        return torch.where(self.unknown_words(tokens)[:, None], sure, logits)    # (B, A)

    def unknown_words(self, tokens):
        """bool[B]: the questions int64[B, T] that hold a word the tokenizer does not know (an <unk> id), which
        answer_logits() and answer() answer "can't answer" (models without that class: none)."""
        has_class = self.answers is not None and CANT in self.answers
        return (tokens == Tokenizer.unk_id).any(1) & has_class

    @torch.no_grad()
    def load_pretrained(self, ckpt):
        """Start from another checkpoint's weights (load_checkpoint's dict), e.g. synthetic pretraining before real
        data with other words or answers: tensors of the same name and shape are copied, word embeddings and answer
        rows are matched by name, and what the checkpoint lacks (new words, new answers) keeps its fresh init.
        -> names of the tensors that were not copied whole."""
        src, own, partial = ckpt['model'], self.state_dict(), []   # state_dict tensors share storage with the model
        by_name = {'dec.embed.weight': (ckpt['tokenizer']['itos'], self.tokenizer.itos),
                   'head.weight': (ckpt['answers'], self.answers), 'head.bias': (ckpt['answers'], self.answers)}
        for name, t in own.items():
            if name in by_name and name in src:
                old_row = {w: i for i, w in enumerate(by_name[name][0])}
                new = [i for i, w in enumerate(by_name[name][1]) if w in old_row]
                old = [old_row[by_name[name][1][i]] for i in new]
                t[new] = src[name][old].to(t.dtype)                          # (matched rows, ...)
                if len(new) < len(t):
                    partial.append(f"{name} ({len(t) - len(new)} of {len(t)} rows new)")
            elif name in src and src[name].shape == t.shape:
                t.copy_(src[name])
            else:
                partial.append(name)
        return partial

    def encode_question(self, question):
        """A user's question -> int64[max_q_len] ids, or a one-line ValueError for one the model cannot read whole:
        no words, or more than max_q_len - 2 tokens (encode() would cut it and the model answer another question)."""
        if not isinstance(question, str):
            raise TypeError(f"a question is a str, not {type(question).__name__}; ask one like 'Is the light red?'")
        words = self.tokenizer.split(question)
        if not any(w[0].isalnum() for w in words):
            raise ValueError(f"the question is empty: {question!r} has no words; ask one like 'Is the light red?'")
        if len(words) > self.cfg.max_q_len - 2:
            raise ValueError(f"the question has {len(words)} words and marks, this model reads "
                             f"{self.cfg.max_q_len - 2} ---> HINT: ask it in fewer words")
        return self.tokenizer.encode(question, self.cfg.max_q_len)[0]

    @torch.no_grad()
    def answer(self, image, question):
        """One image (path, PIL image or array, any size or mode) and one question -> (answer, prob, {answer: prob}).
        answer='generate' -> (answer, prob, {'reason': reason}): the words written before ':' and after it, prob the
        product of the answer words' probabilities (with no answer word, that of the ':' or <eos> written instead).
        When the answer is "can't answer", extra['abstain'] says why: the question's unknown words (then extra holds
        only that), or the model's own judgement (its top answer, or p(can't answer) above abstain_above)."""
        if self.tokenizer is None or self.answers is None:
            raise RuntimeError("answer() needs a model from from_checkpoint(), which knows its words and answers")
        if self.training:  # train mode would skip the mirror and move BatchNorm's running statistics
            raise RuntimeError("answer() is inference: call model.eval() first (from_checkpoint() returns it so)")
        device = self.dec.embed.weight.device
        ids = torch.from_numpy(self.encode_question(question))[None].to(device)             # (1, max_q_len)
        img = torch.from_numpy(load_image(image, self.cfg.img_h, self.cfg.img_w)).to(device)[None]  # (1, Hi, Wi, 3)
        if self.unknown_words(ids)[0]:
            return CANT, 1.0, {'abstain': 'unknown words: ' + ' '.join(self.tokenizer.unknown(question))}
        judged = {'abstain': 'the model judged it out of scope'}
        if self.head is not None:
            logits, _ = self(img, ids)                                         # (1, A)
            probs = (logits[0].float() / self.temperature).softmax(-1)         # (A,)
            best = self.answers[int(self.answer_logits(logits, ids)[0].argmax())]   # the top answer, or the threshold's
            dist = dict(zip(self.answers, probs.tolist()))
            return best, dist[best], {**dist, **judged} if best == CANT else dist
        Tq = int((ids != Tokenizer.pad_id).sum())
        seq = self.generate(img, ids[:, :Tq], self.cfg.max_answer_len)         # (1, Tq + n)
        logits, _ = self(img, seq)                                             # (1, Tq + n, V)
        written = seq[0, Tq:]                                                  # (n,)
        probs = (logits[0, Tq - 1:-1].float() / self.temperature).softmax(-1)  # (n, V): the steps that wrote them
        p = probs.gather(1, written[:, None])[:, 0]                            # (n,)
        cut = next((i for i, t in enumerate(written.tolist()) if self.tokenizer.itos[t] in (':', '<eos>')), len(written))
        said = self.tokenizer.decode(written[:cut].tolist())
        abstains = said != CANT and CANT in self.answers and \
            self.answers[int(self.answer_logits(logits, seq)[0].argmax())] == CANT   # the first word, or the threshold
        if abstains:
            return CANT, float(probs[0, self.tokenizer.stoi[self.tokenizer.split(CANT)[0]]]), {'reason': '', **judged}
        return said, float(p[:max(cut, 1)].prod()), {'reason': self.tokenizer.decode(written[cut + 1:].tolist()),
                                             **(judged if said == CANT else {})}


def image_attention(out):
    """Where the text looked, from the `out` dict of a forward pass: [(name, float[B, T, P])], one entry per decoder
    layer and kind ('cross-attn i', and 'self-attn i' under prefix fusion), heads averaged, each row summing to 1.
    Self-attention maps keep the text rows' image columns, renormalised, since the rest of such a row reads text.
    eval.py's grounding and viz.py's heatmaps both read attention through here."""
    P = out['prefix']
    maps = [(f'cross-attn {i}', a) for i, a in enumerate(out['cross_attn'])]               # (B, H, T, P) each
    maps += [(f'self-attn {i}', a[:, :, P:, :P]) for i, a in enumerate(out['self_attn']) if P]  # (B, H, T, P)
    maps = [(name, a.float().mean(1)) for name, a in maps]                                  # (B, T, P)
    return [(name, m / m.sum(-1, keepdim=True).clamp_min(1e-12)) for name, m in maps]

# -----------------------------------------------------------------------------
# Script helpers: optimizer, device, learning-rate schedule, FLOPs (train.py and bench.py use them; eval.py and viz.py
# pick_device)

def configure_optimizers(model, weight_decay, lr, betas, device_type, lr_scale=None, muon=False):
    """[AdamW] or, with muon=True, [AdamW, Muon]: Muon takes the transformer blocks' matrices and the conv stem's
    filters past its first layer, AdamW the rest (embeddings, the conv on the pixels, heads, norms, biases). Weight
    decay on tensors of two or more dims (matrices, convs, the embeddings and position tables); one group per
    component (the first part of a parameter's name) and kind, each carrying 'lr_scale' (from
    lr_scale={'vit':..,'proj':..,'dec':..,'head':..}; 1 for any other component, such as patch_head) that train.py
    applies."""
    lr_scale = lr_scale or {}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = name.split('.')[0]
        # the conv on the RGB pixels stays on AdamW: orthogonalised, its 3x3x3 filters move in every direction alike,
        # speckled ones too (two seeds with it under Muon: accuracy at noise std 16 0.796 / 0.788, not 0.842 / 0.800)
        hidden = '.blocks.' in name and p.dim() == 2 or p.dim() == 4 and p.shape[1] != 3
        kind = 'muon' if muon and hidden else 'decay' if p.dim() >= 2 else 'nodecay'
        g = groups.setdefault((part, kind), {'params': [], 'weight_decay': 0.0 if kind == 'nodecay' else weight_decay,
                                             'lr_scale': lr_scale.get(part, 1.0), 'name': f"{part}_{kind}"})
        g['params'].append(p)
    parts = {'vit', 'proj', 'dec', 'head'} | {part for part, _ in groups}   # train.py's four, present or not
    if set(lr_scale) - parts:  # a misspelt component would train at 1x without a word
        raise ValueError(f"lr_scale names {sorted(set(lr_scale) - parts)}: the components are {', '.join(sorted(parts))}")
    fused = device_type == 'cuda'  # the fused CUDA kernel; elsewhere the default foreach implementation
    adamw = torch.optim.AdamW([g for (_, kind), g in groups.items() if kind != 'muon'], lr=lr, betas=betas, fused=fused)
    muon_groups = [g for (_, kind), g in groups.items() if kind == 'muon']
    return [adamw, Muon(muon_groups, lr=lr)] if muon_groups else [adamw]


# Polar Express (arXiv 2505.16932): per step the odd quintic that best maps the interval the singular values can
# still be in onto one nearer 1, so five steps leave them near 1 (median 0.99 on a run's momentum buffers) where
# one fixed quintic leaves them spread (median 0.84, 12% under 0.5), for the same five steps' matmuls
POLAR_EXPRESS = ((8.156554524902461, -22.48329292557795, 15.878769915207462),
                 (4.042929935166739, -2.808917465908714, 0.5000178451051316),
                 (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
                 (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
                 (2.3465413258596377, -1.7097828382687081, 0.42323551169305323))


def orthogonalize(G):
    """Muon's Newton-Schulz iteration: float[K, m, n], a stack of updates -> bfloat16[K, m, n], each pushed towards
    the nearest semi-orthogonal matrix U V^T of its SVD U S V^T, by Polar Express's five steps."""
    X = G.bfloat16()
    # spectral norm <= 1/1.02 (the Frobenius norm bounds it): the first quintics are fitted on [0, 1] and grow fast
    # past 1, so Polar Express keeps this margin for bf16's rounding
    X = X / (X.norm(dim=(1, 2), keepdim=True) * 1.02).clamp_min(1e-7)
    tall = X.shape[1] > X.shape[2]
    if tall:
        X = X.mT                                                    # (K, n, m): the smaller Gram matrix
    for a, b, c in POLAR_EXPRESS:                                   # r = min(m, n)
        A = X @ X.mT                                                # (K, r, r)
        X = a * X + (b * A + c * A @ A) @ X                         # (K, r, max(m, n))
    return X.mT if tall else X                                      # (K, m, n)


class Muon(torch.optim.Optimizer):
    """Muon (kellerjordan.github.io/posts/muon): Nesterov momentum, then each matrix's update orthogonalised, so
    every direction of a layer moves alike instead of the few that dominate its gradient. The update is scaled by
    0.2 sqrt(max(m, n)) to AdamW's typical size (arXiv 2502.16982), so both share one lr and schedule.
    Matrices of one shape are orthogonalised as one batch, whatever their group (the groups differ only in lr):
    config/small.py's 40 in 8 batches, 23 ms a step on 2 CPU cores against 47 one by one. A conv's filters as one
    matrix (out, in x kh x kw), as in Jordan's CIFAR-10 speedruns."""
    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, {'lr': lr, 'momentum': momentum, 'weight_decay': 0.0})

    @torch.no_grad()
    def step(self):
        stacks = {}  # (m, n) -> [(parameter, its group, its update as an m x n matrix)]
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is not None:
                    state = self.state[p]
                    if not state:  # the first step; setdefault would build a zero tensor on every step
                        state['momentum'] = torch.zeros_like(p)
                    buf = state['momentum']
                    buf.lerp_(p.grad, 1 - group['momentum'])
                    u = p.grad.lerp(buf, group['momentum']).flatten(1)                  # Nesterov; (m, n)
                    stacks.setdefault(u.shape, []).append((p, group, u))
        for (m, n), items in stacks.items():
            updates = orthogonalize(torch.stack([u for *_, u in items]))               # (K, m, n)
            for (p, group, _), u in zip(items, updates):
                p.mul_(1 - group['lr'] * group['weight_decay'])                        # decoupled, as AdamW
                p.add_(u.view(p.shape).to(p.dtype), alpha=-group['lr'] * 0.2 * max(m, n) ** 0.5)


def pick_device(device):
    """'auto' -> the fastest device here (cuda, then mps, then cpu); any other name is kept as given, or the
    script exits in one line when it is not a device or not on this machine."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    try:
        dev = torch.device(device)
    except RuntimeError:
        sys.exit(f"--device={device} is not a device ---> HINT: auto, cpu, cuda, cuda:1 or mps")
    if dev.type == 'cuda' and (dev.index or 0) >= torch.cuda.device_count() or \
            dev.type == 'mps' and not torch.backends.mps.is_available():
        sys.exit(f"--device={device}, but this torch {torch.__version__} sees no {device} device ---> HINT: --device=auto")
    return device


def fast_dtype(device_type):
    """What --dtype=auto trains in: bf16 on a CUDA GPU that has it, else float32 (on a CPU bf16 is opt-in: seed 1337
    trained in it reached 0.897 in scope against float32's 0.9075, README)."""
    return 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'


def autocast(device_type, dtype):
    """The context a training step's forward runs in: as is for float32, else torch.autocast to dtype. bf16 on a CPU
    also turns SDPA's flash kernel off for the process (the flag says cuda; the CPU's choice follows it too): in bf16
    it took twice its float32 time on the ViT's 144 tokens, forward and backward, where the math kernel does not;
    with it off, config/small.py's loop in bf16 used 15% less CPU time than in float32 (AVX512-BF16, README)."""
    if dtype == 'float32':
        return nullcontext()
    if device_type == 'cpu':
        torch.backends.cuda.enable_flash_sdp(False)
    return torch.autocast(device_type, dtype=getattr(torch, dtype))


def get_lr(it, warmup_iters, lr_decay_iters, lr, min_lr):
    """Linear warmup for warmup_iters, then cosine decay to min_lr at lr_decay_iters, then flat."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def flops_per_sample(cfg, questions_per_image=1, text_len=None):
    """Forward FLOPs per question (2 per multiply-add, matmuls only); the image's share is split between
    the questions that use it. Multiply by 3 for forward + backward."""
    T = text_len or cfg.max_text_len
    P, p, Cv, Cd, Hd = cfg.n_patches, cfg.patch, cfg.vit_width, cfg.dec_width, cfg.dec_width // cfg.dec_heads
    kv = 2 * cfg.dec_kv_heads * Hd                                   # width of the fused key/value projection
    image = 0
    if cfg.fusion != 'none':
        vit_layer = P * (4 * Cv * Cv + 2 * Cv * cfg.vit_mlp) + 2 * P * P * Cv
        if cfg.stem:  # stride-2 3x3 convs: output pixels x 9 x in x out channels, then the 1x1 conv
            chans, pixels = (3,) + tuple(cfg.stem), cfg.img_h * cfg.img_w
            embed = sum(pixels // 4 ** (i + 1) * 9 * a * b for i, (a, b) in enumerate(zip(chans, chans[1:])))
            embed += P * chans[-1] * Cv
        else:
            embed = P * 3 * p * p * Cv
        image = 2 * (embed + cfg.vit_depth * vit_layer + P * Cv * Cd)
        if cfg.image_cross:
            image += 2 * cfg.dec_depth * P * Cd * kv                 # cross keys/values: once per image
    L = T + (P if cfg.image_prefix else 0)
    # scores and weighted values: a causal kernel skips the upper half; a prefix-LM mask fills a full matrix
    dec_layer = L * (2 * Cd * Cd + Cd * kv + 3 * Cd * cfg.dec_mlp) + (2 if cfg.image_prefix else 1) * L * L * Cd
    if cfg.image_cross:
        dec_layer += T * 2 * Cd * Cd + 2 * T * P * Cd
    last = dec_layer
    if cfg.answer == 'classify' and not cfg.image_prefix:  # TVLM.forward's last block: the summary row's query, MLP
        last = L * Cd * kv + 2 * Cd * Cd + 3 * Cd * cfg.dec_mlp + 2 * L * Cd   # and cross-attention, every row's k, v
        last += 2 * Cd * Cd + 2 * P * Cd if cfg.image_cross else 0
    head = Cd * cfg.n_answers if cfg.answer == 'classify' else T * Cd * cfg.vocab_size  # one summary token, or all
    text = 2 * ((cfg.dec_depth - 1) * dec_layer + last + head)
    return image / questions_per_image + text
