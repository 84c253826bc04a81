"""
Measure what a tvlm user feels, on whatever device this runs, and print it as one table:
  1 ceiling    FLOP/s of a large matmul: the most this device does, so model figures can be a share of it
  2 train      one optimizer step (forward + loss + backward + AdamW), eager and compiled (and bf16 on CUDA)
  3 sharing    questions/s with 1..8 questions per image: the ViT runs once per image, not per question
  4 answer     inference throughput at batch 32, single-question latency, 6 questions about one frame
  5 data       train.py's batch sampling + host->device copy, as a share of the train step
  6 prepare    full-size 1280x720 JPEGs/s through tvlm.load_image (JPEG draft mode), on `workers` processes
$ python bench.py config/bench.py            # the reference model; compare its figures across machines
$ python bench.py config/small.py --compile=False
Model inputs are random (timing does not depend on pixel values); FLOPs come from tvlm.flops_per_sample.
"""
import functools
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import fields
from multiprocessing import Pool

import numpy as np
import torch
from PIL import Image

from prepare import PATCH_LABELS, patch_labels, sample_batch
from tvlm import TVLM, TVLMConfig, answer_loss, configure_optimizers, flops_per_sample, load_image

# -----------------------------------------------------------------------------
# defaults (plain globals, overridden by config files and --key=value, see configurator.py)
# model: every TVLMConfig field, with its default
img_h, img_w, patch, stem = 144, 256, 16, ()
vit_width, vit_depth, vit_heads, vit_mlp = 128, 4, 4, 512
dec_width, dec_depth, dec_heads, dec_kv_heads, dec_mlp = 128, 2, 4, 2, 512
vocab_size, max_q_len, n_answers = 128, 24, 16
fusion, blind, pos, dropout = 'cross', False, 'rope', 0.0
rope_theta, norm_eps, label_smoothing = 10000.0, 1e-6, 0.0
# training step, as train.py takes it
batch_size = 64
questions_per_image = 4
lr, weight_decay, beta1, beta2, grad_clip = 1e-3, 0.05, 0.9, 0.95, 1.0
patch_weight = 1.0            # > 0: the step also trains the patch-label head, and get_batch builds its targets
data_dir = 'data/synthetic'   # section 5 times batches from it; missing or another image size -> a temporary one
# system
device = 'auto'               # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'                # 'float32' or 'bfloat16'; auto = fp32, plus bf16 rows on CUDA
compile = True                # also time the torch.compile'd train step
threads = 0                   # torch.set_num_threads; 0 keeps torch's default (one per core)
# bench
warmup, iters = 3, 10         # untimed, then timed repetitions; figures are medians
latency_iters = 50            # repetitions for the latency percentiles
matmul_n = 2048               # the ceiling's square matmul size
prep_images, workers = 64, 2  # section 6: JPEGs written, processes decoding them
# train.py keys that mean nothing here, accepted so that `python bench.py config/small.py` just works
out_dir, init_from, eval_interval, log_interval, eval_max_questions, patience = '', 'scratch', 0, 0, 0, 0
min_lr, max_iters, warmup_iters, lr_decay_iters, grad_accum = 0.0, 0, 0, 0, 1
lr_vit, lr_proj, lr_dec, lr_head, peak_flops, focal_gamma = 1.0, 1.0, 1.0, 1.0, 0.0, 0.0
class_weights, augment, hflip, backend, seed = False, False, False, 'auto', 1337
wandb_log, wandb_project, wandb_run_name = False, 'tvlm', 'run'
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str, tuple))]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

if device == 'auto':
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
device_type = 'cuda' if device.startswith('cuda') else device
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(seed)
n_patch_labels = len(PATCH_LABELS) if patch_weight and not blind else 0
cfg = TVLMConfig(**{f.name: globals()[f.name] for f in fields(TVLMConfig)})
dtypes = ['float32'] + (['bfloat16'] if device_type == 'cuda' and torch.cuda.is_bf16_supported() else [])
dtypes = dtypes if dtype == 'auto' else [dtype]


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


def synthetic_batch(B, qpi):
    """Random uint8 images (B/qpi of them), full-length questions and answers, the question -> image index and
    (with a patch head) random patch labels, on the device."""
    N = max(1, B // qpi)
    images = torch.randint(0, 256, (N, cfg.img_h, cfg.img_w, 3), dtype=torch.uint8)       # (N, Hi, Wi, 3)
    tokens = torch.randint(4, cfg.vocab_size, (N * qpi, cfg.max_q_len))                   # (B, T) no padding
    targets = torch.randint(0, cfg.n_answers, (N * qpi,))                                 # (B,)
    idx = torch.arange(N).repeat_interleave(qpi)                                          # (B,) question -> image
    grid = (N, cfg.img_h // cfg.patch, cfg.img_w // cfg.patch, cfg.n_patch_labels)
    patches = (torch.rand(grid) < 0.05).float() if cfg.n_patch_labels else None           # (N, Hi/p, Wi/p, K)
    return [t if t is None else t.to(device) for t in (images, tokens, targets, idx, patches)]


def autocast(dt):
    return torch.autocast(device_type, dtype=torch.bfloat16) if dt == 'bfloat16' else nullcontext()


def make_train_step(dt, use_compile):
    model = TVLM(cfg).to(device)
    opt = configure_optimizers(model, weight_decay, lr, (beta1, beta2), device_type)
    fwd = torch.compile(model) if use_compile else model

    def step(images, tokens, targets, idx, patches):  # train.py's step: forward, losses, backward, clip, AdamW
        with autocast(dt):
            logits, patch_loss = fwd(images, tokens, image_idx=idx, patch_targets=patches)
            loss = answer_loss(logits, targets, label_smoothing)
            if patch_loss is not None:
                loss = loss + patch_weight * patch_loss
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def train_rows(label, step, batch, qpi):
    """Time a train step; print ms, questions/s, images/s, FLOP/s and its share of the ceiling. Returns s/step."""
    B, N = len(batch[1]), len(batch[0])
    dt = float(np.median(timed(lambda: step(*batch))))
    flops = 3 * flops_per_sample(cfg, qpi, cfg.max_q_len) * B / dt  # backward ~ 2x forward
    row('train', f"{label}: ms/step", f"{dt * 1e3:.1f}", f"B={B} questions, {N} images")
    row('train', f"{label}: questions/s, images/s", f"{B / dt:,.0f}", f"{N / dt:,.0f} images/s")
    row('train', f"{label}: FLOP/s (share of ceiling)", si(flops, 'FLOP/s'), f"{100 * flops / ceiling:.0f}% of the fp32 matmul")
    return dt

# -----------------------------------------------------------------------------
# 1 ceiling

print(f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}, model: {cfg.n_patches} image "
      f"tokens, {TVLM(cfg).num_params() / 1e6:.2f}M parameters, fusion={cfg.fusion}; load average "
      f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine slows every row)")
row('section', 'measure', 'value', 'note')
for dt in dtypes:
    a, b = (torch.randn(matmul_n, matmul_n, device=device, dtype=getattr(torch, dt)) for _ in range(2))
    flops = 2 * matmul_n ** 3 / float(np.median(timed(lambda: a @ b)))
    ceiling = flops if dt == 'float32' else ceiling
    row('ceiling', f"{dt} matmul {matmul_n}x{matmul_n}", si(flops, 'FLOP/s'))
del a, b

# 2 train step, at batch_size and questions_per_image
batch = synthetic_batch(batch_size, questions_per_image)
for dt in dtypes:
    for use_compile in ([False, True] if compile else [False]):
        t_step = train_rows(f"{dt}{' compiled' if use_compile else ''}", make_train_step(dt, use_compile),
                            batch, questions_per_image)
        if dt == 'float32' and not use_compile:
            t_eager = t_step
if not compile:
    row('train', 'compiled', 'skipped', '--compile=False')

# 3 the shared-image lever: same number of questions, fewer images
step, qps = make_train_step(dtypes[-1], False), {}
for qpi in (1, 2, 4, 6, 8):
    b = synthetic_batch(batch_size, qpi)
    qps[qpi] = len(b[1]) / float(np.median(timed(lambda: step(*b))))
    row('sharing', f"{qpi} question(s)/image: questions/s", f"{qps[qpi]:,.0f}", f"{qps[qpi] / qps[1]:.2f}x of 1/image")

# 4 inference: no autograd, eval mode
model = TVLM(cfg).to(device).eval()
with torch.inference_mode(), autocast(dtypes[-1]):
    b = synthetic_batch(32, 1)
    t = float(np.median(timed(lambda: model(b[0], b[1], image_idx=b[3]))))
    row('answer', 'batch 32: questions/s', f"{32 / t:,.0f}", f"{t * 1e3:.1f} ms per batch")
    b = synthetic_batch(1, 1)
    t = timed(lambda: model(b[0], b[1]), latency_iters) * 1e3
    row('answer', '1 question: latency p50 / p95', f"{np.percentile(t, 50):.1f} / {np.percentile(t, 95):.1f} ms")
    b = synthetic_batch(6, 6)
    t = timed(lambda: model(b[0], b[1], image_idx=b[3]), latency_iters) * 1e3
    row('answer', '6 questions, 1 frame: latency p50', f"{np.percentile(t, 50):.1f} ms", f"p95 {np.percentile(t, 95):.1f} ms")
del model

# -----------------------------------------------------------------------------
# 5 data path: prepare.sample_batch from memmaps + the device copy, as train.py's get_batch does


def open_or_make_dataset(tmp):
    """The prepared train split if it matches the model's image size, else a temporary one of random images
    with the arrays sample_batch reads, in prepare.py's format (uint8 images, uint16 questions, ...)."""
    path = data_dir
    if not os.path.exists(os.path.join(data_dir, 'train_images.npy')) or \
            np.load(os.path.join(data_dir, 'train_images.npy'), mmap_mode='r').shape[1:3] != (cfg.img_h, cfg.img_w):
        n, q_per = 256, 6
        rng = np.random.default_rng(0)
        q = rng.integers(4, cfg.vocab_size, (n * q_per, cfg.max_q_len)).astype(np.uint16)
        q[:, cfg.max_q_len * 3 // 4:] = 0                          # padding, which get_batch strips
        xy = np.sort(rng.uniform(0, 1, (n * q_per, 2, 2)), axis=1) * [cfg.img_w, cfg.img_h]   # q_per boxes per image
        arrays = {'images': rng.integers(0, 256, (n, cfg.img_h, cfg.img_w, 3), dtype=np.uint8), 'questions': q,
                  'answers': rng.integers(0, cfg.n_answers, n * q_per).astype(np.int16),
                  'q_offsets': np.arange(0, n * q_per + 1, q_per, dtype=np.int64),
                  'boxes': xy.reshape(-1, 4).astype(np.float32), 'box_offsets': np.arange(0, n * q_per + 1, q_per),
                  'box_class': rng.integers(0, 10, n * q_per).astype(np.int16),
                  'box_colour': rng.integers(0, 4, n * q_per).astype(np.int8)}
        for name, arr in arrays.items():
            np.save(os.path.join(tmp, f'train_{name}.npy'), arr)
        path = tmp
    load = lambda name: np.load(os.path.join(path, f'train_{name}.npy'), mmap_mode='r')
    return path, {name: load(name) for name in ('images', 'questions', 'answers', 'q_offsets', 'boxes', 'box_offsets',
                                                'box_class', 'box_colour')}


def to_device(x):
    x = torch.from_numpy(np.require(x, requirements=['C', 'W']))
    return x.pin_memory().to(device, non_blocking=True) if device_type == 'cuda' else x.to(device)


def get_batch(arrays, gen):
    *batch, rows = sample_batch(arrays, batch_size // questions_per_image, questions_per_image, gen)
    if cfg.n_patch_labels:
        batch.append(patch_labels(arrays, rows, cfg.patch))
    return [to_device(x) for x in batch]


with tempfile.TemporaryDirectory() as tmp:
    path, arrays = open_or_make_dataset(tmp)
    gen = torch.Generator().manual_seed(seed)
    t = float(np.median(timed(lambda: get_batch(arrays, gen), 5 * iters)))
    note = 'temporary random dataset (no prepared one at this image size)' if path == tmp else path
    row('data', 'get_batch: ms, share of train step', f"{t * 1e3:.2f} ms", f"{100 * t / t_eager:.1f}% of {t_eager * 1e3:.1f} ms; {note}")

    # 6 preparation: decode + centre-crop + resize of full-size dash-cam JPEGs
    rng = np.random.default_rng(0)  # smooth shapes plus sensor noise, so the JPEGs are photo-sized, not tiny
    for i in range(prep_images):
        low = Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((1280, 720), Image.BICUBIC)
        noisy = np.clip(np.asarray(low, np.int16) + rng.normal(0, 6, (720, 1280, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(tmp, f'{i}.jpg'), quality=90)
    paths = [os.path.join(tmp, f'{i}.jpg') for i in range(prep_images)]
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
    decode = functools.partial(load_image, img_h=cfg.img_h, img_w=cfg.img_w)
    for n_proc in sorted({1, workers}):
        with Pool(n_proc) as pool:
            pool.map(decode, paths[:n_proc])                                # start the workers untimed
            t = float(np.median(timed(lambda: pool.map(decode, paths, chunksize=4), max(1, iters // 3))))
        row('prepare', f"1280x720 JPEG -> {cfg.img_h}x{cfg.img_w}, {n_proc} process(es)", f"{prep_images / t:,.0f} img/s",
            f"{kb:.0f} kB JPEGs")
