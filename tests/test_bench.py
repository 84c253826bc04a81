"""bench.py runs end to end and prints every section; flops_per_sample agrees with torch's FLOP counter."""
import os
import re
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import ROOT, TINY_MODEL
from tvlm import TVLM, TVLMConfig, flops_per_sample

QUICK = ['--batch_size=8', '--questions_per_image=2', '--warmup=0', '--iters=1', '--latency_iters=2', '--matmul_n=128',
         '--prep_images=4']
TINY = TINY_MODEL + QUICK + ['--img_h=32', '--img_w=32', '--max_q_len=8', '--data_dir=no/such/dir']


def run_bench(args):
    res = subprocess.run([sys.executable, 'bench.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert res.returncode == 0, f"bench.py failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_bench_runs_and_prints_every_section():
    """Without a prepared dataset, on random data that holds what config/small.py's losses read (the look loss's
    referents too), with a batch smaller than the sharing section's 8 questions an image."""
    out = run_bench(TINY + ['--look_weight=0.5', '--batch_size=4'])
    sections = {line.split()[0] for line in out.splitlines() if line.strip()}
    missing = {'ceiling', 'train', 'sharing', 'answer', 'generate', 'data', 'prepare'} - sections
    assert not missing, f"sections {sorted(missing)} not printed:\n{out}"
    for qpi in (1, 2, 4, 6, 8):
        assert f"{qpi} question(s)/image" in out, f"no row for {qpi} questions per image:\n{out}"
    check_generate_rows(out, question_len=8)


def check_generate_rows(out, question_len):
    """Section 5 times greedy decoding of up to max_answer_len (12) tokens, cached and not, at batch 32 and 1."""
    for n in (32, 1):
        for kind in ('cache', 'no cache'):
            m = re.search(rf"^generate +batch {n}, {kind}: tokens/s +([\d,]+) +(\d+) new tokens after (\d+) question",
                          out, re.M)
            assert m, f"no generate row for batch {n}, {kind}:\n{out}"
            assert int(m.group(1).replace(',', '')) > 0 and 0 < int(m.group(2)) <= 12 and int(m.group(3)) == question_len
        assert re.search(rf"^generate +batch {n}: speedup of the cache +\d+\.\dx", out, re.M), out


def test_bench_in_generate_mode():
    """--answer=generate times the step on question + answer sequences (random answers of max_answer_len tokens
    after questions of 6), and generates with the model itself."""
    out = run_bench(TINY + ['--answer=generate'])
    assert 'answers written in <= 12 tokens' in out and 'B=8 questions of 18 tokens' in out
    check_generate_rows(out, question_len=8)


def test_bench_refuses_a_dtype_it_cannot_time():
    """A misspelt or unsupported --dtype is one line, not an AttributeError from torch after the first sections."""
    res = subprocess.run([sys.executable, 'bench.py', *TINY, '--dtype=float8'], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip() == ("--dtype='float8': bench.py times auto (float32, and "
                                                          "bfloat16 on a CUDA GPU that has it), float32 or bfloat16")


def test_bench_in_bfloat16():
    """--dtype=bfloat16 alone times the bf16 step against the bf16 ceiling (it once read the fp32 one before it existed)."""
    out = run_bench(TINY + ['--dtype=bfloat16'])
    assert 'bfloat16 matmul' in out and 'bfloat16: ms/step' in out and 'float32' not in out


def test_bench_times_the_model_train_py_trains(toy_data, tmp_path):
    """The same config and dataset give bench.py and train.py the same model: parameters, image, question and answer
    shapes (bench once used its own max_q_len, vocabulary and answers); with the mirror, as config/small.py's (bench
    once failed to build a mirror model without a tokenizer)."""
    args = TINY_MODEL + [f'--data_dir={toy_data}', '--batch_size=12', '--questions_per_image=3', '--augment', '--mirror']
    train = subprocess.run([sys.executable, 'train.py', *args, f'--out_dir={tmp_path}', '--max_iters=0', '--device=cpu'],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stdout + train.stderr
    model_line = lambda text: re.search(r"model: .*? patch labels", text).group(0)
    bench = run_bench(args + QUICK[2:])
    assert model_line(bench) == model_line(train.stdout)
    assert 'as train.py reads it' in bench and 'B=12 questions' in bench


@pytest.mark.parametrize('fusion, qpi, stem, answer', [
    ('cross', 1, (), 'classify'), ('cross', 4, (), 'classify'), ('prefix', 1, (), 'classify'), ('prefix', 4, (), 'classify'),
    ('both', 1, (), 'classify'), ('both', 4, (), 'classify'), ('cross', 4, (16, 32, 64, 128), 'classify'),
    ('cross', 4, (), 'generate'), ('both', 1, (), 'generate')])
def test_flops_per_sample_matches_flop_counter(fusion, qpi, stem, answer):
    """config/small.py's shapes, the forward that training runs. SDPA's math kernel: FlopCounterMode does not count
    the CPU flash-attention kernel that F.scaled_dot_product_attention picks, but does count the q@k and att@v
    matmuls. In generate mode the tied LM head runs at every position of question + answer."""
    torch.manual_seed(0)
    cfg = TVLMConfig(img_h=144, img_w=256, fusion=fusion, stem=stem, answer=answer)
    model, B = TVLM(cfg), 4
    images = torch.randint(0, 256, (B // qpi, cfg.img_h, cfg.img_w, 3), dtype=torch.uint8)   # (N, Hi, Wi, 3)
    tokens = torch.randint(4, cfg.vocab_size, (B, cfg.max_text_len))                        # (B, T)
    idx = torch.arange(B // qpi).repeat_interleave(qpi)                                     # (B,)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images, tokens, image_idx=idx)
    counted, formula = counter.get_total_flops() / B, flops_per_sample(cfg, qpi, cfg.max_text_len)
    assert abs(formula / counted - 1) < 0.05, f"{fusion}, {qpi} q/image: formula {formula:.4g} vs counted {counted:.4g}"
