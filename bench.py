"""
Measure what a tvlm user feels, on whatever device this runs, and print it as one table:
  1 ceiling    FLOP/s of a large matmul per precision: the most this device does, so model figures are a share of it
  2 train      train.py's optimizer step (forward + loss + backward + clip + AdamW/Muon) on its own batches, eager,
               and compiled with --compile=True; fp32, plus bf16 autocast on CUDA (or --dtype=bfloat16 alone);
               without ema_decay's moving average (0.35 ms of config/small.py's ~180 ms step on a 2-core CPU)
  3 sharing    questions/s with 1..8 questions per image: the ViT runs once per image, not per question
  4 answer     inference throughput at batch 32, single-question latency, 6 questions about one frame
  5 generate   greedy decoding of max_answer_len words after a full-length question, tokens/s with and without
               the key/value cache (a classify-mode config times its twin with answer='generate')
  6 data       train.py's batch sampling, augmentation and host->device copy, as a share of the train step
  7 prepare    full-size 1280x720 JPEGs/s through tvlm.load_image (JPEG draft mode), on `workers` processes
$ python bench.py config/small.py            # times exactly the model and batches that train.py config/small.py trains
$ python bench.py config/bench.py            # the reference model on random data; compare its figures across machines
The model comes from the same config and dataset as in train.py (prepare.model_config); with no prepared dataset
at data_dir, from img_h, img_w, vocab_size, max_q_len and n_answers, on random data. FLOPs: tvlm.flops_per_sample.
"""
import functools
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from multiprocessing import Pool

import numpy as np
import torch
from PIL import Image

from prepare import DATASET_FIELDS, FAMILIES, data_shape, load_meta, model_config, open_split, training_batch
from tvlm import (TVLM, TVLMConfig, Tokenizer, autocast, configure_optimizers, fast_dtype, flops_per_sample, load_image,
                  pick_device)

# -----------------------------------------------------------------------------
# defaults: train.py's, run from its own source, so any config file for train.py works here unchanged and
# sets the same model and step; then bench.py's few of its own. --key=value overrides both (configurator.py).
_train = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')).read()
exec(_train[_train.index('# defaults'):_train.index('exec(open(')])
# the dataset's shape, used only when data_dir holds no prepared dataset (config/bench.py sets its own)
img_h, img_w, vocab_size, max_q_len, max_answer_len, n_answers = (asdict(TVLMConfig())[k] for k in DATASET_FIELDS[:6])
threads = 0                   # torch.set_num_threads; 0 keeps torch's default (one per core)
warmup, iters = 3, 10         # untimed, then timed repetitions; figures are medians
latency_iters = 50            # repetitions for the latency percentiles
matmul_n = 2048               # the ceiling's square matmul size
prep_images, workers = 64, 2  # section 6: JPEGs written, processes decoding them
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------

_at_least(1, 'batch_size', 'questions_per_image', 'iters', 'latency_iters', 'matmul_n', 'prep_images', 'workers')
_at_least(0, 'warmup', 'threads')
if dtype not in ('auto', 'float32', 'bfloat16'):  # train.py's float16 needs its GradScaler, which bench.py leaves out
    sys.exit(f"--dtype={dtype!r}: bench.py times auto (float32, and bfloat16 on a CUDA GPU that has it), float32 or "
             f"bfloat16")
device = pick_device(device)
device_type = 'cuda' if device.startswith('cuda') else device
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(seed)
# auto: float32, and train.py's --dtype=auto where that is another (bf16 on a CUDA GPU that has it)
precisions = list(dict.fromkeys(['float32', fast_dtype(device_type)])) if dtype == 'auto' else [dtype]


def sync():
    if device_type == 'cuda':
        torch.cuda.synchronize()  # CUDA calls return before the work is done: stop the clock after it


def timed(fn, n=None):
    """Seconds per call of fn(), one entry per timed repetition, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(n or iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return np.array(times)


def row(section, what, value, note=''):
    print(f"{section:<9} {what:<34} {value:>16}  {note}", flush=True)


def si(x, unit=''):
    """1.23e10 -> '12.3 G' + unit: the figures span nine orders of magnitude."""
    for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {prefix}{unit}"
    return f"{x:.1f} {unit}"

# -----------------------------------------------------------------------------
# the model and the data: train.py's, or random stand-ins in prepare.py's format


def make_dataset(tmp):
    """A temporary train split of random images with the arrays sample_batch, patch_labels and look_targets read."""
    n, q_per = 256, 6
    rng = np.random.default_rng(0)
    q = rng.integers(4, vocab_size, (n * q_per, max_q_len)).astype(np.uint16)
    q[:, 0], q[:, max_q_len * 3 // 4 - 1] = Tokenizer.bos_id, Tokenizer.eos_id   # as encoded: answers follow <eos>
    q[:, max_q_len * 3 // 4:] = 0                                  # padding, which sample_batch strips
    answer_text = rng.integers(4, vocab_size, (n * q_per, max_answer_len)).astype(np.uint16)   # the longest answers
    answer_text[:, -1] = Tokenizer.eos_id
    xy = np.sort(rng.uniform(0, 1, (n * q_per, 2, 2)), axis=1) * [img_w, img_h]   # q_per boxes per image
    arrays = {'images': rng.integers(0, 256, (n, img_h, img_w, 3), dtype=np.uint8), 'questions': q, 'answer_text': answer_text,
              'answers': rng.integers(0, n_answers, n * q_per).astype(np.int16),
              'q_offsets': np.arange(0, n * q_per + 1, q_per, dtype=np.int64),
              'boxes': xy.reshape(-1, 4).astype(np.float32), 'box_offsets': np.arange(0, n * q_per + 1, q_per),
              'box_class': rng.integers(0, 10, n * q_per).astype(np.int16),
              'box_colour': rng.integers(0, 4, n * q_per).astype(np.int8),
              'rain': rng.integers(-1, 2, n).astype(np.int8),
              'family': rng.integers(0, len(FAMILIES), n * q_per).astype(np.uint8),   # the look loss's targets:
              'referents': np.arange(n * q_per), 'ref_offsets': np.arange(n * q_per + 1)}   # each question its own box
    for name, arr in arrays.items():
        np.save(os.path.join(tmp, f'train_{name}.npy'), arr)
    return {name: np.load(os.path.join(tmp, f'train_{name}.npy'), mmap_mode='r') for name in arrays}


_tmp = tempfile.TemporaryDirectory()
if os.path.exists(os.path.join(data_dir, 'meta.json')):
    shape, data = data_shape(load_meta(data_dir)), open_split(data_dir, 'train')
    source = f"{data_dir}, as train.py reads it"
else:
    shape, data = {k: globals()[k] for k in DATASET_FIELDS[:6]}, make_dataset(_tmp.name)
    source = f"random data (no prepared dataset at {data_dir})"
cfg = model_config(config, shape, np.bincount(data['answers'], minlength=shape['n_answers']))
gen = torch.Generator().manual_seed(seed)


def get_batch(qpi=questions_per_image):
    """train.py's batch (prepare.training_batch, augmentation and word dropout included), less its mirror flips."""
    return training_batch(data, cfg, max(1, batch_size // qpi), qpi, gen, device, augment=augment,
                          word_dropout=word_dropout)


def make_train_step(precision, use_compile):
    model = TVLM(cfg).to(device)
    optimizers = configure_optimizers(model, weight_decay, lr, (beta1, beta2), device_type, muon=muon)
    fwd = torch.compile(model) if use_compile else model

    def step(images, tokens, targets, idx, patches, looks):  # train.py's: forward and loss, backward, clip, update
        with autocast(device_type, precision):
            _, loss = fwd(images, tokens, targets, image_idx=idx, patch_targets=patches, look_targets=looks)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def step_time(step, batch):
    return float(np.median(timed(lambda: step(*batch))))

# -----------------------------------------------------------------------------
# 1 ceiling


print(f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}; load average "
      f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine slows every row)")
print(f"{TVLM(cfg).describe()}; batches: {source}")
row('section', 'measure', 'value', 'note')
ceiling = {}
for precision in precisions:
    a, b = (torch.randn(matmul_n, matmul_n, device=device, dtype=getattr(torch, precision)) for _ in range(2))
    ceiling[precision] = 2 * matmul_n ** 3 / float(np.median(timed(lambda: a @ b)))
    row('ceiling', f"{precision} matmul {matmul_n}x{matmul_n}", si(ceiling[precision], 'FLOP/s'))
del a, b

# 2 train step, on train.py's batches: batch_size questions about batch_size / questions_per_image images
batch = get_batch()
B, N, T = len(batch[1]), len(batch[0]), batch[1].shape[1]
for precision in precisions:
    for use_compile in ([False, True] if compile else [False]):
        label = f"{precision}{' compiled' if use_compile else ''}"
        t = step_time(make_train_step(precision, use_compile), batch)
        flops = 3 * flops_per_sample(cfg, questions_per_image, T) * B / t  # backward ~ 2x forward
        row('train', f"{label}: ms/step", f"{t * 1e3:.1f}", f"B={B} questions of {T} tokens, {N} images")
        row('train', f"{label}: questions/s, images/s", f"{B / t:,.0f}", f"{N / t:,.0f} images/s")
        row('train', f"{label}: FLOP/s (share of ceiling)", si(flops, 'FLOP/s'),
            f"{100 * flops / ceiling[precision]:.0f}% of the {precision} matmul")
        if not use_compile:
            t_train = t  # the step train.py takes with --dtype of the last precision: the data path's yardstick
if not compile:
    row('train', 'compiled', 'skipped', '--compile=True times it')

# 3 the shared-image lever: same number of questions, fewer images
step, qps = make_train_step(precisions[-1], False), {}
for qpi in (1, 2, 4, 6, 8):
    b = get_batch(qpi)
    qps[qpi] = len(b[1]) / step_time(step, b)
    row('sharing', f"{qpi} question(s)/image: questions/s", f"{qps[qpi]:,.0f}", f"{qps[qpi] / qps[1]:.2f}x of 1/image")

# 4 inference: no autograd, eval mode, on random inputs of the model's full question length
model = TVLM(cfg).to(device).eval()


def random_questions(n_images, qpi):
    images = torch.randint(0, 256, (n_images, cfg.img_h, cfg.img_w, 3), dtype=torch.uint8, device=device)  # (N, Hi, Wi, 3)
    tokens = torch.randint(4, cfg.vocab_size, (n_images * qpi, cfg.max_q_len), device=device)            # (B, T)
    return images, tokens, torch.arange(n_images, device=device).repeat_interleave(qpi)                  # (B,)


with torch.inference_mode(), autocast(device_type, precisions[-1]):
    images, tokens, idx = random_questions(32, 1)
    t = float(np.median(timed(lambda: model(images, tokens, image_idx=idx))))
    row('answer', 'batch 32: questions/s', f"{32 / t:,.0f}", f"{t * 1e3:.1f} ms per batch")
    images, tokens, _ = random_questions(1, 1)
    t = timed(lambda: model(images, tokens), latency_iters) * 1e3
    row('answer', '1 question: latency p50 / p95', f"{np.percentile(t, 50):.1f} / {np.percentile(t, 95):.1f} ms")
    images, tokens, idx = random_questions(1, 6)
    t = timed(lambda: model(images, tokens, image_idx=idx), latency_iters) * 1e3
    row('answer', '6 questions, 1 frame: latency p50', f"{np.percentile(t, 50):.1f} ms", f"p95 {np.percentile(t, 95):.1f} ms")
del model

# 5 generate: greedy decoding of a written answer, the whole sequence rerun each step or one token through the cache
# (the figures count the tokens actually written: an untrained model may write <eos> early)
# a classify-mode config times its generate-mode twin, less the class-weighting loss knobs that the twin refuses
gen_cfg = cfg if cfg.answer == 'generate' else replace(cfg, answer='generate', answer_weights=(), focal_gamma=0.0)
gen_model = TVLM(gen_cfg).to(device).eval()
n_new = gen_model.cfg.max_answer_len
with torch.inference_mode(), autocast(device_type, precisions[-1]):
    for n in (32, 1):
        images, tokens, _ = random_questions(n, 1)
        t, per_token = {}, {}
        encoder = float(np.median(timed(functools.partial(gen_model.encode_image, images))))  # shared by both
        for use_cache in (True, False):
            decode = functools.partial(gen_model.generate, images, tokens, n_new, use_cache=use_cache)
            written = decode().shape[1] - tokens.shape[1]
            t[use_cache] = float(np.median(timed(decode)))
            # a token after the first: the call less a one-token call (image encoder, prefill), per further token
            first = float(np.median(timed(functools.partial(gen_model.generate, images, tokens, 1, use_cache=use_cache))))
            per_token[use_cache] = (t[use_cache] - first) / max(written - 1, 1)
            row('generate', f"batch {n}, {'cache' if use_cache else 'no cache'}: tokens/s",
                f"{n * written / t[use_cache]:,.0f}", f"{written} new tokens after {tokens.shape[1]} question tokens")
        row('generate', f"batch {n}: speedup of the cache", f"{t[False] / t[True]:.1f}x",
            f"{t[True] * 1e3:.1f} vs {t[False] * 1e3:.1f} ms a call, each with one pass of the image encoder")
        row('generate', f"batch {n}: decoding alone", f"{(t[False] - encoder) / (t[True] - encoder):.1f}x",
            f"{(t[True] - encoder) * 1e3:.1f} vs {(t[False] - encoder) * 1e3:.1f} ms a call less its "
            f"{encoder * 1e3:.1f} ms image encoder pass")
        row('generate', f"batch {n}: per further token", f"{per_token[False] / per_token[True]:.1f}x",
            f"{per_token[True] * 1e3:.2f} vs {per_token[False] * 1e3:.2f} ms a token: decoding alone, cache vs none")
del gen_model

# 6 data path: get_batch's share of the train step
t = float(np.median(timed(get_batch, 5 * iters)))
row('data', 'get_batch: ms, share of train step', f"{t * 1e3:.2f} ms", f"{100 * t / t_train:.1f}% of {t_train * 1e3:.1f} ms")

# 7 preparation: decode + centre-crop + resize of full-size dash-cam JPEGs
rng = np.random.default_rng(0)  # smooth shapes plus sensor noise, so the JPEGs are photo-sized, not tiny
for i in range(prep_images):
    low = Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((1280, 720), Image.BICUBIC)
    noisy = np.clip(np.asarray(low, np.int16) + rng.normal(0, 6, (720, 1280, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(os.path.join(_tmp.name, f'{i}.jpg'), quality=90)
paths = [os.path.join(_tmp.name, f'{i}.jpg') for i in range(prep_images)]
kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
decode = functools.partial(load_image, img_h=cfg.img_h, img_w=cfg.img_w)
for n_proc in sorted({1, workers}):
    with Pool(n_proc) as pool:
        pool.map(decode, paths[:n_proc])                                # start the workers untimed
        t = float(np.median(timed(lambda: pool.map(decode, paths, chunksize=4), max(1, iters // 3))))
    row('prepare', f"1280x720 JPEG -> {cfg.img_h}x{cfg.img_w}, {n_proc} process(es)", f"{prep_images / t:,.0f} img/s",
        f"{kb:.0f} kB JPEGs")
_tmp.cleanup()
