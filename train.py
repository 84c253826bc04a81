"""
Train a tvlm model on a dataset made by prepare.py. Runs on a laptop CPU, one GPU, or many with DDP.

CPU quickstart (the embedded synthetic world):
$ python prepare.py && python train.py config/small.py
One GPU, real data:
$ python train.py config/base.py
DDP on 8 GPUs of one node (4 processes on a CPU also work: the backend falls back to gloo):
$ torchrun --standalone --nproc_per_node=8 train.py config/base.py config/bdd100k.py
Resume the run in out_dir where it stopped:
$ python train.py config/small.py --init_from=resume
Fine-tune a trained model on another prepared dataset (synthetic pretraining, then real BDD100K):
$ python train.py config/finetune.py --init_from=out-small/ckpt.pt --data_dir=data/bdd100k
"""
import copy
import gc
import json
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict

import numpy as np
import torch
from torch.distributed import init_process_group, destroy_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from prepare import (DATASET_FIELDS, check_compatible, data_shape, load_meta, loss_inputs, make_dir, model_config,
                     open_split, split_batches, to_device, training_batch)
from tvlm import (CANT, TVLM, TVLMConfig, Tokenizer, answer_targets, autocast, configure_optimizers, fast_dtype,
                  flops_per_sample, get_lr, load_checkpoint, mirror_tables, pick_device)

# -----------------------------------------------------------------------------
# defaults: plain globals, overridden by config files and --key=value (configurator.py). bench.py runs this
# block too, from the next line to the configurator's, so it takes exactly the keys that train.py takes.
# model: every TVLMConfig field with its default (tvlm.py says what each does; the loss knobs label_smoothing,
# focal_gamma and patch_weight are among them), except the ones the dataset decides (prepare.model_config)
globals().update({k: v for k, v in asdict(TVLMConfig()).items() if k not in DATASET_FIELDS})
_elsewhere = {k: f"the dataset decides {k} (prepare.py's --img_h, --img_w, --max_q_len and --max_answer_len, and the "
                 f"words and answers it holds). " for k in DATASET_FIELDS}   # what configurator.py says if one is asked
# I/O
data_dir = 'data/synthetic'
out_dir = 'out-small'
init_from = 'scratch'         # 'scratch', 'resume' (from out_dir/last.pt), or a checkpoint path to fine-tune from
eval_interval = 200           # iterations between val evaluations and checkpoints
log_interval = 20             # iterations between log lines; the loop syncs with the device only then
eval_max_questions = 4000     # cap on val questions per evaluation (whole images, in file order)
patience = 0                  # stop after this many evaluations without a better val accuracy; 0 = never
wandb_log = False             # optional: needs `pip install wandb`
wandb_project = 'tvlm'
wandb_run_name = 'run'
# data
batch_size = 64               # questions per micro-step, per process
questions_per_image = 4       # questions share an image in a batch, so the ViT runs once for all of them
grad_accum = 1                # micro-steps per optimizer step
augment = False               # photometric jitter: exposure, contrast, white balance, blur, noise, JPEG
hflip = False                 # mirror images, swapping 'left' and 'right' in questions and answers
word_dropout = 0.0            # the share of question words read as <unk> in training (prepare.training_batch)
class_weights = False         # weight answers by inverse train frequency (sets the model's answer_weights)
# optimizer and schedule
lr = 1e-3
min_lr = 1e-4
max_iters = 2000
warmup_iters = 100
lr_decay_iters = 2000         # cosine from lr to min_lr, ~= max_iters per Chinchilla-style nanoGPT runs
weight_decay = 0.05
beta1, beta2 = 0.9, 0.95
grad_clip = 1.0               # 0 disables
lr_vit, lr_proj, lr_dec, lr_head = 1.0, 1.0, 1.0, 1.0   # per-component multipliers of lr
muon = False                  # Muon for the transformer blocks' matrices, AdamW for the rest (tvlm.Muon)
ema_decay = 0.0               # > 0: evaluate and save a moving average of the weights, keeping this share a step
# system
device = 'auto'               # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'                # 'float32', 'bfloat16' (autocast, on a CPU too), 'float16' (GradScaler, CUDA only);
                              # auto = bf16 on CUDA if supported, else float32
compile = False               # torch.compile the model
backend = 'auto'              # DDP backend: nccl on CUDA, gloo on CPU
peak_flops = 0.0              # the device's peak FLOP/s for MFU (e.g. 312e12 for A100 bf16); 0 = don't report
seed = 1337
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
config = {k: globals()[k] for k in config_keys}
# each would fail deep inside with a traceback, or train backwards (grad_clip < 0)
_at_least(1, 'batch_size', 'questions_per_image', 'grad_accum', 'eval_interval', 'log_interval', 'eval_max_questions')
_at_least(0, 'max_iters', 'warmup_iters', 'weight_decay', 'grad_clip', 'lr_vit', 'lr_proj', 'lr_dec', 'lr_head',
          'patience', 'peak_flops')
for ok, msg in [(batch_size % questions_per_image == 0,
                 f"batch_size={batch_size} must be a multiple of questions_per_image={questions_per_image}"),
                (lr > 0, f"--lr={lr} must be > 0"),
                (0 <= min_lr <= lr, f"--min_lr={min_lr} must be between 0 and lr={lr}"),
                (warmup_iters <= lr_decay_iters,
                 f"--warmup_iters={warmup_iters} must be <= lr_decay_iters={lr_decay_iters}"),
                (0 <= beta1 < 1 and 0 <= beta2 < 1, f"--beta1={beta1} and --beta2={beta2} must be in [0, 1)"),
                (0 <= ema_decay < 1, f"--ema_decay={ema_decay} must be in [0, 1)"),
                (0 <= word_dropout < 1, f"--word_dropout={word_dropout} must be in [0, 1)"),
                (dtype in ('auto', 'float32', 'bfloat16', 'float16'),
                 f"--dtype={dtype!r} must be auto, float32, bfloat16 or float16"),
                (bool(out_dir), "--out_dir is empty ---> HINT: name a folder for the checkpoints, e.g. out-small")]:
    if not ok:
        sys.exit(msg)
if init_from not in ('scratch', 'resume') and os.path.abspath(os.path.dirname(init_from)) == os.path.abspath(out_dir):
    sys.exit(f"--init_from={init_from} is in --out_dir={out_dir}, which this run would overwrite ---> HINT: fine-tune "
             f"into another --out_dir")
# -----------------------------------------------------------------------------

sys.stdout.reconfigure(line_buffering=True)  # show progress live even when piped into tee or a file

# DDP: torchrun sets RANK; every process runs this same script on its own device and batches
ddp = int(os.environ.get('RANK', -1)) != -1
device = pick_device(device)
if ddp:
    rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    init_process_group(backend=backend if backend != 'auto' else 'nccl' if device.startswith('cuda') else 'gloo')
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
else:
    rank, local_rank, world_size = 0, 0, 1
master = rank == 0
device_type = 'cuda' if device.startswith('cuda') else device
if dtype == 'auto':
    dtype = fast_dtype(device_type)
if dtype == 'float16' and device_type != 'cuda':
    sys.exit(f"--dtype=float16 needs a CUDA GPU (its GradScaler); on {device_type} use bfloat16 or float32")
torch.manual_seed(seed + rank)
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
ctx = autocast(device_type, dtype)   # the training step's forward; val runs in float32, as eval.py reads the weights


def rng_states():
    """The global random streams a step draws from (dropout: the CPU's, and on a GPU the GPU's), to save and restore.
    The batches, their jitter included, draw from batch_gen, saved beside them."""
    return {'torch': torch.get_rng_state(), **({'cuda': torch.cuda.get_rng_state()} if device_type == 'cuda' else {})}


def set_rng_states(states):
    torch.set_rng_state(states['torch'])
    if device_type == 'cuda' and 'cuda' in states:   # a checkpoint from a CPU run resumed on a GPU has none
        torch.cuda.set_rng_state(states['cuda'])


# data: memmaps from prepare.py; each rank samples its own batches from its own generator
meta = load_meta(data_dir)
train_data, val_data = open_split(data_dir, 'train'), open_split(data_dir, 'val')
if len(train_data['answers']) == 0 or len(val_data['answers']) == 0:
    sys.exit(f"{data_dir} has no {'train' if len(train_data['answers']) == 0 else 'val'} questions to train on "
             f"---> HINT: prepare a dataset with BDD100K's train images (eval.py can score a test-only dataset)")
tokenizer = Tokenizer.from_dict(meta['tokenizer'])
answers, families = meta['answers'], meta['families']
batch_gen = torch.Generator().manual_seed(seed + rank)
flip_tokens, flip_answers = mirror_tables(tokenizer, answers)

# model: from scratch with this config on this dataset, exactly as the checkpoint being resumed was built, or
# with a pretrained checkpoint's architecture on this dataset's words and answers (fine-tuning)
# best_val_acc -1: no evaluation yet, so the first one writes ckpt.pt whatever it scores (a run at 0.0 wrote none)
iter_num, best_val_acc, train_time, abstain_above, evals_since_best, evaluated_iter = 0, -1.0, 0.0, 1.0, 0, 0
if init_from == 'resume':
    ckpt_path = os.path.join(out_dir, 'last.pt')
    if not os.path.exists(ckpt_path):
        sys.exit(f"--init_from=resume but {ckpt_path} does not exist ---> HINT: train first, or check --out_dir")
else:
    ckpt_path = None if init_from == 'scratch' else init_from
checkpoint = None
if ckpt_path:
    try:
        checkpoint = load_checkpoint(ckpt_path)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"--init_from={init_from}: {e}")
try:
    if init_from == 'resume':
        cfg = TVLMConfig(**checkpoint['model_args'])
        iter_num, best_val_acc, train_time = checkpoint['iter_num'], checkpoint['best_val_acc'], checkpoint['train_time']
        abstain_above, evals_since_best = checkpoint.get('abstain_above', 1.0), checkpoint.get('evals_since_best', 0)
        evaluated_iter = checkpoint.get('evaluated_iter', iter_num)
    else:
        # fine-tuning keeps the pretrained shapes; how to train and answer (dropout, the loss knobs, classify or
        # generate) is this run's config, so a classifier can learn to answer in words
        arch = {} if checkpoint is None else {k: v for k, v in checkpoint['model_args'].items()
                                              if k not in ('dropout', 'label_smoothing', 'focal_gamma', 'patch_weight',
                                                           'look_weight', 'first_word_weight', 'answer', 'max_answer_len')}
        cfg = model_config({**config, **arch}, data_shape(meta), np.bincount(train_data['answers'], minlength=len(answers)))
except (TypeError, ValueError) as e:  # TypeError: model_args of another tvlm.py, with fields this one lacks
    sys.exit(f"{ckpt_path}: {e}" if ckpt_path else str(e))
kept = [f"{k}={getattr(cfg, k)!r} (not {v!r})" for k, v in config.items() if hasattr(cfg, k) and getattr(cfg, k) != v]
if kept and master:  # a resumed run is the checkpoint's model; fine-tuning keeps its architecture
    print(f"note: {ckpt_path} decides {', '.join(kept)}")
if init_from == 'resume' and iter_num >= max_iters and master:
    print(f"note: {ckpt_path} is at iteration {iter_num}, not below --max_iters={max_iters}: there is nothing to "
          f"train ---> HINT: raise --max_iters (and --lr_decay_iters) to train on")
model = TVLM(cfg, tokenizer, answers, mean=meta['mean'], std=meta['std'])
if init_from == 'resume':
    check_compatible(TVLM.from_checkpoint(checkpoint), meta, data_dir)   # the dataset it was trained on, or exit
    model.load_state_dict(checkpoint.get('train_model', checkpoint['model']))   # with ema_decay, 'model' is the average
elif checkpoint is not None:
    old = checkpoint['model_args']
    if (old['img_h'], old['img_w']) != (cfg.img_h, cfg.img_w):
        sys.exit(f"{init_from} was trained on {old['img_h']}x{old['img_w']} images, {data_dir} holds {cfg.img_h}x{cfg.img_w} "
                 f"---> HINT: prepare the data with --img_h={old['img_h']} --img_w={old['img_w']}")
    partial = model.load_pretrained(checkpoint)
    if master:
        print(f"fine-tuning from {init_from}; not copied whole: {', '.join(partial) or 'nothing'}")
model.to(device)
raw_model = model  # the plain module: what is trained and counted
if master:
    print(f"{raw_model.describe()}, device={device}, dtype={dtype}, world_size={world_size}")


def get_batch():
    """A training batch on the device, as prepare.training_batch makes it from this run's settings."""
    return training_batch(train_data, cfg, batch_size // questions_per_image, questions_per_image, batch_gen, device,
                          (flip_tokens, flip_answers) if hflip else None, augment, word_dropout)


def answer_hits(logits, tokens, targets):
    """bool[B], a training batch's right answers, for the logged train accuracy: the classifier's choice, or in
    generate mode the word the decoder predicts after the question's <eos>, over the whole vocabulary, against the
    answer's first word (teacher-forced; a training batch holds no answer ids; val reads answers as eval.py does)."""
    if cfg.answer == 'classify':
        return logits.argmax(-1) == targets
    b, sep = torch.arange(len(tokens), device=tokens.device), Tokenizer.question_end(tokens)
    return logits[b, sep].argmax(-1) == targets[b, sep]


scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')
optimizers = configure_optimizers(raw_model, weight_decay, lr, (beta1, beta2), device_type,
                                  lr_scale={'vit': lr_vit, 'proj': lr_proj, 'dec': lr_dec, 'head': lr_head}, muon=muon)
if init_from == 'resume':
    states = checkpoint['optimizer']
    states = states if isinstance(states, list) else [states]  # checkpoints before Muon saved AdamW's state alone
    if len(states) != len(optimizers):
        sys.exit(f"{ckpt_path} was trained with{'out' if muon else ''} Muon ---> HINT: resume with --muon={not muon}")
    for opt, state in zip(optimizers, states):
        settings = [{k: v for k, v in g.items() if k != 'params'} for g in opt.param_groups]   # this run's
        try:  # the moments, and the checkpoint's settings, which this run's replace below
            opt.load_state_dict(state)
        except ValueError:  # groups of other sizes: a tvlm before 32fa566 split them otherwise (Muon took no conv)
            sys.exit(f"{ckpt_path}'s optimizer state does not fit this tvlm's parameter groups, so it cannot be "
                     f"resumed exactly ---> HINT: continue from its weights with --init_from={ckpt_path} and another "
                     f"--out_dir (fresh optimizer moments)")
        for group, mine in zip(opt.param_groups, settings):   # --lr_vit or --weight_decay on resume take effect
            group.update(mine)
    scaler.load_state_dict(checkpoint['scaler'])
    if world_size == 1:
        set_rng_states(checkpoint['rng'])
        batch_gen.set_state(checkpoint['rng']['batch'])
    else:  # only rank 0's streams are saved: fresh ones per rank, so no rank replays old batches or shares another's
        torch.manual_seed(seed + rank + 1_000_003 * iter_num)      # dropout (the jitter draws from batch_gen)
        batch_gen.manual_seed(seed + rank + 1_000_003 * iter_num)
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)
# the weights that get evaluated and saved: with ema_decay, their exponential moving average, which smooths out the
# last steps' noise (Polyak averaging), BatchNorm's running statistics included; copied after DDP has broadcast
# rank 0's weights, so every rank averages the same ones
ema_model = copy.deepcopy(raw_model).requires_grad_(False) if ema_decay else raw_model
if init_from == 'resume' and ema_decay:
    ema_model.load_state_dict(checkpoint['model'])
ema_pairs = [(a, w) for a, w in zip(ema_model.state_dict().values(), raw_model.state_dict().values())
             if ema_decay and a.is_floating_point()]   # (average, weight), tensors that share the modules' storage
checkpoint = None  # free the memory


@contextmanager
def whole():
    """Run a block that must not be cut in half: a Ctrl-C (SIGINT) inside it is raised when it ends."""
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def stop_if_not_finite(loss, where):
    if not np.isfinite(loss):
        sys.exit(f"loss is {loss} {where}: stopping; the last good checkpoints in {out_dir} are untouched "
                 f"---> HINT: lower --lr, keep --grad_clip on, or try --dtype=float32")


# the val questions that set the saved weights' abstain_above (tvlm.TVLM.answer_logits): every in-scope one, in the
# phrasings seen in training and the held-out ones alike, as val accuracy picks the checkpoint over both: the threshold
# is there to catch out-of-scope questions, and an in-scope question in a new wording must not trip it
sets_threshold = np.zeros(len(val_data['answers']), bool)
if CANT in answers:
    sets_threshold = val_data['answers'] != answers.index(CANT)


@torch.no_grad()
def evaluate():
    """Val loss (the training loss, auxiliary losses included, so it compares with the train loss), accuracy and
    accuracy per question family, over whole images in file order, of the weights that get saved; and their
    abstain_above: the highest p(can't answer) of a sets_threshold question (none: 1, never abstain by threshold)."""
    ema_model.eval()
    loss_sum, correct, fam_correct, fam_total = 0.0, 0, np.zeros(len(families)), np.zeros(len(families))
    n, p_cant = 0, []
    for rows, q_rows, images, q, idx in split_batches(val_data, 4 * batch_size):
        if n >= eval_max_questions:
            break
        q, patches, looks = (None if x is None else to_device(x, device)
                             for x in loss_inputs(val_data, cfg, q, rows, q_rows))   # the training batches' inputs
        targets = answer_targets(q) if cfg.answer == 'generate' else to_device(val_data['answers'][q_rows].astype(np.int64), device)
        logits, loss = ema_model(to_device(images, device), q, targets, image_idx=to_device(idx, device),
                                 patch_targets=patches, look_targets=looks)
        loss_sum += loss.item() * len(q)
        scores = ema_model.answer_logits(logits, q, rules=False).float()   # (B, A): the answers as eval.py reads them
        hit = scores.argmax(-1).cpu().numpy() == val_data['answers'][q_rows]   # (B,) bool
        fam = val_data['family'][q_rows]
        correct += int(hit.sum())
        np.add.at(fam_correct, fam, hit)
        np.add.at(fam_total, fam, 1)
        n += len(q)
        if sets_threshold[q_rows].any():
            p = scores.softmax(-1)[:, answers.index(CANT)]                       # (B,)
            p_cant.append(p[torch.from_numpy(sets_threshold[q_rows]).to(device)].max().item())
    ema_model.train()
    per_family = {f'val_acc_{f}': float(c / t) for f, c, t in zip(families, fam_correct, fam_total) if t}
    return {'val_loss': loss_sum / n, 'val_acc': correct / n, **per_family,   # plain floats: weights_only loads them
            'abstain_above': max(p_cant, default=1.0)}


def save_checkpoint(name):
    """Everything needed to resume or to answer, as tensors and plain values (weights_only=True loads it);
    written to a temporary file and renamed, so a crash mid-save never leaves a half-written checkpoint."""
    ckpt = {'model': ema_model.state_dict(), 'optimizer': [opt.state_dict() for opt in optimizers],
            'scaler': scaler.state_dict(), 'model_args': asdict(cfg), 'iter_num': iter_num,
            'best_val_acc': best_val_acc, 'evals_since_best': evals_since_best, 'train_time': train_time,
            'abstain_above': abstain_above, 'evaluated_iter': evaluated_iter,
            'config': config, 'rng': {**rng_states(), 'batch': batch_state},
            'tokenizer': tokenizer.to_dict(), 'answers': answers, 'families': families,
            'data_dir': os.path.abspath(data_dir), 'n_params': raw_model.num_params()}
    if ema_decay:  # resuming needs the weights being trained, besides their average
        ckpt['train_model'] = raw_model.state_dict()
    path = os.path.join(out_dir, name)
    torch.save(ckpt, path + '.tmp')
    os.replace(path + '.tmp', path)


log_mode = 'a' if init_from == 'resume' else 'w'   # a new run's first record starts a new log; resume appends


def log(record):
    global log_mode
    with open(os.path.join(out_dir, 'log.jsonl'), log_mode) as f:
        f.write(json.dumps(record) + '\n')
    log_mode = 'a'
    if wandb_log:
        wandb.log(record, step=record['iter'])


if master:
    make_dir(out_dir, '--out_dir')
    if init_from != 'resume' and os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
        print(f"note: this new run replaces {out_dir}'s log and checkpoints as it writes its own ---> HINT: "
              f"--init_from=resume continues the run that wrote them; another --out_dir keeps them")
    if wandb_log:
        try:
            import wandb  # optional extra, imported only when asked for
        except ImportError:
            sys.exit("--wandb_log=True needs wandb ---> HINT: pip install wandb")
        wandb.init(project=wandb_project, name=wandb_run_name, config=config)
batch_state = batch_gen.get_state()  # the state that draws iteration iter_num's batch: a resume draws it again
batch = get_batch()
# running sums since the last log line, kept on the device so a step never waits for it (nanoGPT syncs at log time);
# flops: this rank's forward and backward matmul FLOPs, at each batch's own question length (padding to it included)
loss_sum, hits, seen, steps, t_log = torch.zeros((), device=device), torch.zeros((), device=device), 0, 0, time.time()
flops = 0
t0, step_rng = time.time(), None
try:
    while True:
        lr_now = get_lr(iter_num, warmup_iters, lr_decay_iters, lr, min_lr)  # logged: each group's is this x lr_scale
        for group in (g for opt in optimizers for g in opt.param_groups):
            group['lr'] = lr_now * group['lr_scale']

        # evaluate, checkpoint, stop early (once per iteration: not again on a resumed run's first weights, unless
        # Ctrl-C cut their evaluation short; not at a scratch run's iteration 0)
        if (iter_num % eval_interval == 0 or iter_num == max_iters) and iter_num != evaluated_iter:
            metrics = evaluate()  # on every rank, so all take the same early-stopping decision
            if ddp:  # ...from rank 0's numbers, in case GPU nondeterminism makes the ranks' differ
                shared = [metrics]
                torch.distributed.broadcast_object_list(shared, src=0)
                metrics = shared[0]
            stop_if_not_finite(metrics['val_loss'], f"on val at iteration {iter_num}")
            is_best, abstain_above = metrics['val_acc'] > best_val_acc, metrics['abstain_above']
            best_val_acc = max(best_val_acc, metrics['val_acc'])
            evals_since_best, evaluated_iter = 0 if is_best else evals_since_best + 1, iter_num
            if master:
                fam = ', '.join(f"{k[8:]} {v:.3f}" for k, v in metrics.items() if k.startswith('val_acc_'))
                print(f"eval {iter_num}: val loss {metrics['val_loss']:.4f}, val acc {metrics['val_acc']:.4f}"
                      f"{' (best)' if is_best else ''} [{fam}], {train_time / 60:.1f} min")
                log({'kind': 'eval', 'iter': iter_num, 'time': train_time, **metrics})
                if is_best:
                    save_checkpoint('ckpt.pt')
                save_checkpoint('last.pt')
            if patience and evals_since_best >= patience:
                if master:
                    print(f"early stop: no better val accuracy in {patience} evaluations")
                break
            t0 = t_log = time.time()  # evaluation time is not training time
        if iter_num >= max_iters:
            break

        # forward, backward, update; the next batch is drawn while the device works on this one
        step_rng = rng_states()  # what this step's dropout draws from: a Ctrl-C before the update rewinds it
        for micro_step in range(grad_accum):
            images, q, targets, idx, patches, looks = batch
            # gradients are averaged across ranks only on the last micro-step, not on every one
            with model.no_sync() if ddp and micro_step < grad_accum - 1 else nullcontext():
                with ctx:
                    logits, loss = model(images, q, targets, image_idx=idx, patch_targets=patches, look_targets=looks)
                    loss = loss / grad_accum
                next_state = batch_gen.get_state()
                batch = get_batch()
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
            hits += answer_hits(logits, q, targets).sum()
            seen += len(q)
            flops += 3 * flops_per_sample(cfg, questions_per_image, q.shape[1]) * len(q)
        if grad_clip:
            for opt in optimizers:
                scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)  # a device tensor
        with whole():  # a Ctrl-C here waits for iter_num: last.pt never holds an update it does not count
            for opt in optimizers:
                scaler.step(opt)
                opt.zero_grad(set_to_none=True)
            scaler.update()
            for avg, w in ema_pairs:  # the average takes a step towards the new weights
                avg.lerp_(w, 1 - ema_decay)
            iter_num, batch_state, step_rng = iter_num + 1, next_state, None   # the next step's batch; no rewind

        # timing and logging
        t1 = time.time()
        train_time += t1 - t0
        t0 = t1
        steps += 1
        if iter_num % log_interval == 0:
            if ddp:  # the mean over ranks: the loss logged is all ranks', and all stop on the same number (a NaN on
                torch.distributed.all_reduce(loss_sum)  # one rank alone stopped it; torchrun then killed the others)
                loss_sum /= world_size
            mean_loss = (loss_sum / steps).item()  # the loop's one wait for the device, every log_interval steps
            stop_if_not_finite(mean_loss, f"in the {steps} iterations up to {iter_num}")
            dt = (time.time() - t_log) / steps
            if master:
                qps = batch_size * grad_accum * world_size / dt
                mfu = flops * world_size / (steps * dt) / peak_flops if peak_flops else None
                gn = grad_norm.item() if grad_clip else None   # the norm comes from clipping: none without it
                print(f"iter {iter_num}: loss {mean_loss:.4f}, acc {hits.item() / seen:.3f}, lr {lr_now:.1e}, "
                      + (f"grad {gn:.2f}, " if grad_clip else '')
                      + f"{dt * 1000:.1f}ms, {qps:,.0f} q/s, {qps / questions_per_image:,.0f} img/s"
                      + (f", mfu {100 * mfu:.1f}%" if mfu else ''))
                log({'kind': 'train', 'iter': iter_num, 'loss': mean_loss, 'acc': hits.item() / seen,
                     'lr': lr_now, 'grad_norm': gn, 'ms': dt * 1000, 'samples_per_s': qps,
                     'mfu': mfu})
            loss_sum.zero_()
            hits.zero_()
            seen, steps, flops, t_log = 0, 0, 0, time.time()
except KeyboardInterrupt:
    if step_rng is not None:  # cut short before its update: resuming redoes the step with its batch and its draws
        set_rng_states(step_rng)
    if master:
        save_checkpoint('last.pt')
        print(f"\ninterrupted at iteration {iter_num}: saved {out_dir}/last.pt; continue with --init_from=resume")
    sys.exit(130)

if master:
    print(f"done: best val acc {best_val_acc:.4f}, {train_time / 60:.1f} min of training; best checkpoint {out_dir}/ckpt.pt"
          if best_val_acc >= 0 else f"done: no evaluation ran (max_iters={max_iters}), so no checkpoint was written")
if ddp:
    # a cheap end-of-run proof that DDP kept the replicas identical: compare every rank's weights to rank 0's
    compared = [raw_model, ema_model] if ema_decay else [raw_model]   # the weights being trained, and their average
    flat = torch.cat([p.detach().flatten().float() for m in compared for p in m.parameters()])   # (n,)
    ref = flat.clone()
    torch.distributed.broadcast(ref, src=0)
    diff = torch.tensor([(flat - ref).abs().max().item()], device=flat.device)
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    if master:
        print(f"ddp: max parameter difference across {world_size} ranks = {diff.item():.3g}")
    # DDP's reducer holds the process group: free it first, or gloo's threads are torn down at interpreter exit
    # (SIGABRT, 2 runs in 12 of the test). It sits in a reference cycle, so `del` alone left it to the exit too
    del model
    gc.collect()
    torch.distributed.barrier()
    destroy_process_group()
