"""
tvlm: a small PaliGemma-style vision-language model for questions about traffic scenes, in one file.

Read it top to bottom: config -> tokenizer -> image loading -> building blocks (RMSNorm, RoPE, attention,
MLPs) -> the SigLIP-style vision encoder -> the Gemma-style decoder -> TVLM, which fuses the two and
answers -> optimizer, learning-rate schedule, FLOP count.

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
import re
from dataclasses import dataclass, asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

# -----------------------------------------------------------------------------
# Configuration

@dataclass
class TVLMConfig:
    # image: 16:9 dash-cam frames stored at 144x256 keep the aspect of BDD100K's 720x1280
    img_h: int = 144
    img_w: int = 256
    patch: int = 16
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
    n_answers: int = 16
    # fusion: 'cross' attends to image tokens from every block, 'prefix' puts them in front of the
    # question (PaliGemma), 'both' does both; blind=True ignores the image (question-only ablation)
    fusion: str = 'cross'
    blind: bool = False
    pos: str = 'rope'                # 'rope' or 'learned' (the no-RoPE ablation)
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    label_smoothing: float = 0.0

    def __post_init__(self):
        checks = [
            (self.img_h % self.patch == 0 and self.img_w % self.patch == 0,
             f"image {self.img_h}x{self.img_w} is not divisible by patch {self.patch}"),
            (self.vit_width % self.vit_heads == 0, f"vit_width={self.vit_width} not divisible by vit_heads={self.vit_heads}"),
            (self.dec_width % self.dec_heads == 0, f"dec_width={self.dec_width} not divisible by dec_heads={self.dec_heads}"),
            (self.dec_heads % self.dec_kv_heads == 0, f"dec_heads={self.dec_heads} not divisible by dec_kv_heads={self.dec_kv_heads}"),
            ((self.dec_width // self.dec_heads) % 2 == 0, f"decoder head dim {self.dec_width // self.dec_heads} must be even for RoPE"),
            (self.fusion in ('cross', 'prefix', 'both'), f"fusion={self.fusion!r} must be 'cross', 'prefix' or 'both'"),
            (self.pos in ('rope', 'learned'), f"pos={self.pos!r} must be 'rope' or 'learned'"),
            (0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid TVLMConfig: {msg}")

    @property
    def n_patches(self):
        return (self.img_h // self.patch) * (self.img_w // self.patch)

# -----------------------------------------------------------------------------
# Tokenizer: word level, because the questions come from a few hundred templates and a word is the
# unit a reader can see in an attention map. Ids 0-3 are fixed: 0 pads, so a mask is just `ids != 0`.

class Tokenizer:
    """Word-level tokenizer: lower-cased words and punctuation marks, <pad>=0 <unk>=1 <bos>=2 <eos>=3."""
    specials = ['<pad>', '<unk>', '<bos>', '<eos>']
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words):
        self.itos = list(self.specials) + [w for w in words if w not in self.specials]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, corpus, min_count=1):
        counts = {}
        for text in corpus:
            for w in cls.split(text):
                counts[w] = counts.get(w, 0) + 1
        return cls(sorted(w for w, c in counts.items() if c >= min_count))  # sorted: same corpus, same ids

    @staticmethod
    def split(text):
        return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text.lower())

    def __len__(self):
        return len(self.itos)

    def encode(self, text, max_len):
        """str -> (int64[max_len] ids, bool[max_len] mask); truncates long text but always keeps <eos>."""
        ids = [self.stoi.get(w, self.unk_id) for w in self.split(text)][:max_len - 2]
        ids = [self.bos_id] + ids + [self.eos_id]
        out = np.zeros(max_len, dtype=np.int64)
        out[:len(ids)] = ids
        return out, out != self.pad_id

    def decode(self, ids):
        words = [self.itos[i] if 0 <= i < len(self.itos) else '<unk>' for i in ids]
        words = [w for w in words if w not in ('<pad>', '<bos>', '<eos>')]
        return re.sub(r" ([?.,!])", r"\1", ' '.join(words))

    def to_dict(self):
        return {'itos': self.itos}

    @classmethod
    def from_dict(cls, d):
        assert d['itos'][:4] == cls.specials, f"not a tvlm tokenizer: first tokens are {d['itos'][:4]}"
        return cls(d['itos'][4:])

# -----------------------------------------------------------------------------
# Images: one function turns any picture into the model's input, used by prepare.py and by answer()
# alike, so a photo at inference time goes through exactly the pixels path the training data did.

def load_image(src, img_h, img_w):
    """path | PIL.Image | uint8[H, W] | uint8[H, W, 3 or 4] -> uint8[img_h, img_w, 3]: centre-crop to the
    target aspect, then resize. For JPEG files, draft mode decodes straight at 1/2, 1/4 or 1/8 scale."""
    if isinstance(src, np.ndarray):
        assert src.dtype == np.uint8 and src.ndim in (2, 3), f"expected a uint8 HxW or HxWxC array, got {src.dtype} {src.shape}"
        img = Image.fromarray(src)
    elif isinstance(src, Image.Image):
        img = src
    else:
        img = Image.open(src)
        if img.format == 'JPEG':
            img.draft('RGB', (img_w, img_h))  # picks the largest reduction that stays >= the target size
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
    return np.asarray(img, dtype=np.uint8)
