"""bench.py runs end to end and prints every section; flops_per_sample agrees with torch's FLOP counter."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tvlm import TVLM, TVLMConfig, flops_per_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--img_h=32', '--img_w=32', '--patch=8', '--vit_width=32', '--vit_depth=1', '--vit_heads=2', '--vit_mlp=64',
        '--dec_width=32', '--dec_depth=1', '--dec_heads=2', '--dec_kv_heads=1', '--dec_mlp=64', '--max_q_len=8',
        '--batch_size=8', '--questions_per_image=2', '--warmup=0', '--iters=1', '--latency_iters=2',
        '--matmul_n=128', '--prep_images=4', '--compile=False', '--data_dir=no/such/dir']


def test_bench_runs_and_prints_every_section():
    res = subprocess.run([sys.executable, 'bench.py', *TINY], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"bench.py failed:\n{res.stdout}\n{res.stderr}"
    sections = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    missing = {'ceiling', 'train', 'sharing', 'answer', 'data', 'prepare'} - sections
    assert not missing, f"sections {sorted(missing)} not printed:\n{res.stdout}"
    for qpi in (1, 2, 4, 6, 8):
        assert f"{qpi} question(s)/image" in res.stdout, f"no row for {qpi} questions per image:\n{res.stdout}"


@pytest.mark.parametrize('fusion, qpi, stem', [('cross', 1, ()), ('cross', 4, ()), ('prefix', 1, ()), ('prefix', 4, ()),
                                               ('both', 1, ()), ('both', 4, ()), ('cross', 4, (16, 32, 64, 128))])
def test_flops_per_sample_matches_flop_counter(fusion, qpi, stem):
    """config/small.py's shapes. out={} takes the explicit attention path: FlopCounterMode does not count the CPU
    flash-attention kernel that F.scaled_dot_product_attention picks, but does count the q@k and att@v matmuls."""
    torch.manual_seed(0)
    cfg = TVLMConfig(img_h=144, img_w=256, fusion=fusion, stem=stem)
    model, B = TVLM(cfg), 4
    images = torch.randint(0, 256, (B // qpi, cfg.img_h, cfg.img_w, 3), dtype=torch.uint8)   # (N, Hi, Wi, 3)
    tokens = torch.randint(4, cfg.vocab_size, (B, cfg.max_q_len))                           # (B, T)
    idx = torch.arange(B // qpi).repeat_interleave(qpi)                                     # (B,)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, tokens, image_idx=idx, out={})
    counted, formula = counter.get_total_flops() / B, flops_per_sample(cfg, qpi, cfg.max_q_len)
    assert abs(formula / counted - 1) < 0.05, f"{fusion}, {qpi} q/image: formula {formula:.4g} vs counted {counted:.4g}"
