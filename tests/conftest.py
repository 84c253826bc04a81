"""Tests import the top-level scripts' functions (tvlm, prepare, eval, viz, bench) from the repository root."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import json

import numpy as np
import pytest

import prepare

TINY_MODEL = ['--patch=8', '--vit_width=32', '--vit_depth=1', '--vit_heads=2', '--vit_mlp=64', '--dec_width=32',
              '--dec_depth=1', '--dec_heads=2', '--dec_kv_heads=1', '--dec_mlp=64']


def write_toy_dataset(out, n_images=120, H=32, W=48, seed=0):
    """A dataset in prepare.py's format whose answers are plainly visible: each half of an image is bright or
    dark, and the questions ask about the left half, the right half, or both. Small enough for seconds of CPU."""
    from tvlm import Tokenizer
    rng = np.random.default_rng(seed)
    questions = ['is the left side bright?', 'is the right side bright?', 'are both sides bright?']
    # the words of every 'answer : reason' too, for the generative mode (answer_text)
    tok = Tokenizer.build(questions + ['yes no : the left right side is are both bright dark one'])
    os.makedirs(out, exist_ok=True)
    for split in ('train', 'val', 'test'):
        bright = rng.random((n_images, 2)) > 0.5                                   # (N, 2) left, right
        images = rng.integers(0, 60, (n_images, H, W, 3), dtype=np.uint8)
        images[:, :, :W // 2] += np.where(bright[:, 0], 150, 0).astype(np.uint8)[:, None, None, None]
        images[:, :, W // 2:] += np.where(bright[:, 1], 150, 0).astype(np.uint8)[:, None, None, None]
        answers = np.stack([bright[:, 0], bright[:, 1], bright.all(1)], 1).ravel()  # (3N,) 1 = yes
        state = lambda b: 'bright' if b else 'dark'
        text = [t for l, r in bright for t in (f"{'yes' if l else 'no'} : the left side is {state(l)}",
                                              f"{'yes' if r else 'no'} : the right side is {state(r)}",
                                              f"{'yes' if l and r else 'no'} : {'both are bright' if l and r else 'one is dark'}")]
        boxes = np.tile(np.array([[0, 0, W // 2, H], [W // 2, 0, W, H]], np.float32), (n_images, 1))
        ref = np.stack([np.arange(n_images) * 2, np.arange(n_images) * 2 + 1], 1)  # (N, 2) box rows
        arrays = dict(
            images=images, boxes=boxes, box_class=np.zeros(2 * n_images, np.int16), box_colour=np.zeros(2 * n_images, np.int8),
            box_offsets=np.arange(0, 2 * n_images + 1, 2, dtype=np.int64),
            questions=np.tile(np.stack([tok.encode(q, 8)[0] for q in questions]), (n_images, 1)).astype(np.uint16),
            answer_text=np.asarray([tok.encode(t, 9)[0][1:] for t in text], np.uint16).reshape(-1, 8),  # no <bos>
            answers=np.where(answers, 0, 1).astype(np.int16), family=np.tile([0, 0, 1], n_images).astype(np.uint8),
            template=np.tile([0, 1, 2], n_images).astype(np.int16), phrasing=np.tile([0, 1, 2], n_images).astype(np.int16),
            image_idx=np.repeat(np.arange(n_images), 3).astype(np.int32),
            q_offsets=np.arange(0, 3 * n_images + 1, 3, dtype=np.int64),
            referents=np.stack([ref[:, 0], ref[:, 1], ref[:, 0], ref[:, 1]], 1).ravel().astype(np.int32),  # L, R, L+R
            ref_offsets=np.concatenate([[0], np.cumsum(np.tile([1, 1, 2], n_images))]).astype(np.int64),
            rain=np.full(n_images, -1, np.int8))
        for name, arr in arrays.items():
            np.save(os.path.join(out, f'{split}_{name}.npy'), arr)
        with open(os.path.join(out, f'{split}_names.json'), 'w') as f:
            json.dump([f'toy-{split}-{i:04d}' for i in range(n_images)], f)
    meta = dict(format_version=prepare.FORMAT_VERSION, source='toy', tokenizer=tok.to_dict(), max_q_len=8, max_answer_len=8,
                answers=['yes', 'no'],
                families=['side', 'both'], templates=questions, box_classes=['half'], img_h=H, img_w=W,
                mean=[100.0] * 3, std=[80.0] * 3)
    with open(os.path.join(out, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    return out


@pytest.fixture(scope='session')
def toy_data(tmp_path_factory):
    return write_toy_dataset(str(tmp_path_factory.mktemp('toy') / 'data'))
