"""train.py: its configs, its learning, checkpoints, DDP and fine-tuning as a subprocess with a tiny model; hflip."""
import glob
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
import pytest
import torch

import prepare
import tvlm
from conftest import ROOT, TINY_MODEL
from tvlm import CANT, TVLM, TVLMConfig, answer_loss, configure_optimizers


def run_train(args, out_dir, data_dir, check=True, runner=None, env_extra=None):
    """Run train.py (or a wrapper `runner` script that patches something first) with a tiny model."""
    cmd = [sys.executable] + (['-c', runner] if runner else [os.path.join(ROOT, 'train.py')])
    cmd += [f'--data_dir={data_dir}', f'--out_dir={out_dir}', *TINY_MODEL, '--batch_size=12',
            '--questions_per_image=3', '--log_interval=5', '--warmup_iters=2', '--device=cpu', *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def not_json(word):
    raise ValueError(f"log.jsonl holds {word}, which strict JSON readers refuse")


def read_log(out_dir, kind):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [r for r in (json.loads(line, parse_constant=not_json) for line in f) if r['kind'] == kind]

# -----------------------------------------------------------------------------
# learning


@pytest.mark.parametrize('ablation', sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'config', 'ablate_*.py'))))
def test_every_ablation_config_builds_on_the_quickstart(ablation):
    """`python train.py config/small.py config/ablate_X.py` asks for a model TVLMConfig accepts (a fusion without
    cross-attention must turn the look loss off, say)."""
    settings = {**asdict(TVLMConfig()), 'class_weights': False}
    for name in ('small.py', ablation):
        exec(open(os.path.join(ROOT, 'config', name)).read(), {}, settings)
    shape = dict(img_h=144, img_w=256, vocab_size=50, max_q_len=16, max_answer_len=16, n_answers=13)
    cfg = prepare.model_config(settings, shape, None)
    assert cfg.fusion == settings['fusion'] and cfg.look_weight == settings['look_weight']


@pytest.mark.parametrize('muon', [False, True])
def test_tiny_model_overfits_one_batch(toy_data, muon):
    """The llm.c sanity check: 8 fixed questions are memorised to zero error within 150 steps, with AdamW alone
    or with Muon for the blocks' matrices."""
    torch.manual_seed(0)
    cfg = TVLMConfig(img_h=32, img_w=48, patch=8, vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64, dec_width=32,
                     dec_depth=1, dec_heads=2, dec_kv_heads=1, dec_mlp=64, vocab_size=20, max_q_len=8, n_answers=5)
    model = TVLM(cfg)
    images = torch.randint(0, 256, (4, 32, 48, 3), dtype=torch.uint8)
    tokens = torch.randint(4, 20, (8, 8))
    targets = torch.randint(0, 5, (8,))
    idx = torch.arange(8) // 2
    optimizers = configure_optimizers(model, 0.0, 3e-3, (0.9, 0.95), 'cpu', muon=muon)
    for _ in range(150):
        logits, loss = model(images, tokens, targets, image_idx=idx)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
    assert loss.item() < 0.05 and (logits.argmax(-1) == targets).all()


def test_answer_loss_options():
    """Weights re-weight the mean, focal loss shrinks confident examples' share, smoothing raises a perfect loss."""
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    plain = answer_loss(logits, y)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, y))
    w = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(answer_loss(logits, y, weight=w), torch.nn.functional.cross_entropy(logits, y, weight=w))
    assert answer_loss(logits, y, focal_gamma=2.0) < plain
    assert answer_loss(torch.tensor([[50.0, -50.0]]), torch.tensor([0]), label_smoothing=0.1) > 1.0


def test_loss_falls_and_checkpoints_load(toy_data, tmp_path):
    """80 iterations on the toy set take val loss well under ln(2) and write a loadable best checkpoint; the MFU
    logged counts each batch's FLOPs at its own question length."""
    out = str(tmp_path / 'out')
    run_train(['--max_iters=80', '--eval_interval=40', '--lr=3e-3', '--peak_flops=1e9'], out, toy_data)
    evals = read_log(out, 'eval')
    assert [e['iter'] for e in evals] == [40, 80]
    assert evals[-1]['val_loss'] < 0.5 * math.log(2) and evals[-1]['val_acc'] > 0.8
    logged = read_log(out, 'train')
    assert len(logged) == 16
    model = TVLM.from_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert model.answers == ['yes', 'no']
    lengths = np.count_nonzero(prepare.open_split(toy_data, 'train')['questions'], axis=1)     # with <bos>, <eos>
    per_step = [3 * 12 * tvlm.flops_per_sample(model.cfg, 3, T) for T in (lengths.min(), lengths.max())]
    for r in logged:                                               # 12 questions a step, 3 per image
        assert per_step[0] * (1 - 1e-9) <= r['mfu'] * 1e9 * r['ms'] / 1000 <= per_step[1] * (1 + 1e-9)
    assert_val_acc_is_evals(model, evals, toy_data)


def assert_val_acc_is_evals(model, evals, data_dir):
    """The val accuracy that picked the saved weights is the accuracy eval.py reads from them on val (the toy set
    asks nothing out of scope and no unknown word, so eval.py's abstention rules change no answer)."""
    import eval as ev
    val = prepare.open_split(data_dir, 'val')
    logits = ev.predict(model, val, 4 * 12)[0]                                   # train.py's val batches: 4 x batch_size
    assert (logits.argmax(1) == val['answers']).mean() == pytest.approx(max(e['val_acc'] for e in evals))


def test_resume_equals_straight_run(toy_data, tmp_path):
    """10 iterations, resume, 10 more = 20 straight, bit for bit (dropout, word dropout, flips, jitter, Muon's
    momentum and the weights' moving average included); a resumed run's optimizer settings are its own; optimizer
    state of other groups (an older tvlm's) is refused in one line."""
    common = ['--eval_interval=10', '--dropout=0.1', '--hflip=True', '--augment=True', '--lr_decay_iters=20',
              '--word_dropout=0.2', '--ema_decay=0.9', '--muon=True']
    run_train(common + ['--max_iters=20'], str(tmp_path / 'a'), toy_data)
    run_train(common + ['--max_iters=10'], str(tmp_path / 'b'), toy_data)
    p = run_train(common + ['--max_iters=20', '--init_from=resume'], str(tmp_path / 'b'), toy_data)
    assert 'note: this new run replaces' not in p.stdout
    a = torch.load(tmp_path / 'a' / 'last.pt', weights_only=True)
    b = torch.load(tmp_path / 'b' / 'last.pt', weights_only=True)
    assert a['iter_num'] == b['iter_num'] == 20 and a['evals_since_best'] == b['evals_since_best']
    assert [e['iter'] for e in read_log(str(tmp_path / 'b'), 'eval')] == [10, 20]   # iteration 10 evaluated once
    for weights in ('model', 'train_model'):
        for k in a[weights]:
            assert torch.equal(a[weights][k], b[weights][k]), (weights, k)
    p = run_train(common[:-1] + ['--max_iters=30', '--init_from=resume'], str(tmp_path / 'b'), toy_data, check=False)
    assert p.returncode == 1 and 'trained with Muon ---> HINT: resume with --muon=True' in p.stderr.strip().splitlines()[-1]
    run_train(common + ['--max_iters=22', '--init_from=resume', '--weight_decay=0.2', '--lr_vit=3.0'], str(tmp_path / 'b'),
              toy_data)      # this run's settings, not the checkpoint's (load_state_dict restores those)
    # the last step is evaluated off the interval too: config/small.py's 3,600 steps with val every 500 rely on it
    assert [e['iter'] for e in read_log(str(tmp_path / 'b'), 'eval')] == [10, 20, 22]
    p = run_train(common + ['--max_iters=20', '--init_from=resume', '--vit_width=64'], str(tmp_path / 'b'), toy_data)
    assert 'decides vit_width=32 (not 64)' in p.stdout and 'at iteration 22, not below --max_iters=20' in p.stdout
    assert [e['iter'] for e in read_log(str(tmp_path / 'b'), 'eval')] == [10, 20, 22]     # nothing trained or logged
    groups = [g for state in torch.load(tmp_path / 'b' / 'last.pt', weights_only=True)['optimizer']
              for g in state['param_groups']]
    assert {g['weight_decay'] for g in groups} == {0.0, 0.2}
    assert {g['lr_scale'] for g in groups if g['name'].startswith('vit')} == {3.0}
    ckpt = torch.load(tmp_path / 'b' / 'last.pt', weights_only=True)    # as a tvlm whose Muon took a matrix less
    ckpt['optimizer'][1]['param_groups'][0]['params'].pop()
    torch.save(ckpt, tmp_path / 'b' / 'last.pt')
    p = run_train(common + ['--max_iters=30', '--init_from=resume'], str(tmp_path / 'b'), toy_data, check=False)
    assert p.returncode == 1 and "state does not fit this tvlm's parameter groups" in p.stderr.strip().splitlines()[-1]
    run_train(common + ['--max_iters=0'], str(tmp_path / 'b'), toy_data)   # a new run that writes nothing keeps the
    assert [e['iter'] for e in read_log(str(tmp_path / 'b'), 'eval')] == [10, 20, 22]   # log of the checkpoints there
    p = run_train(common + ['--max_iters=1'], str(tmp_path / 'b'), toy_data)     # a new run into the same folder
    assert f"note: this new run replaces {tmp_path / 'b'}'s log and checkpoints" in p.stdout
    assert [e['iter'] for e in read_log(str(tmp_path / 'b'), 'eval')] == [1]   # its own log, not the old one's tail


def test_moving_average_steps_towards_the_trained_weights(toy_data, tmp_path):
    """With ema_decay, a checkpoint's 'model' (what is evaluated and answers) is the moving average and its
    'train_model' the weights being trained; each step moves the average (1 - decay) of the way to the new weights."""
    out = tmp_path / 'out'
    common = ['--ema_decay=0.75', '--eval_interval=5']
    run_train(common + ['--max_iters=5'], str(out), toy_data)
    before = torch.load(out / 'last.pt', weights_only=True)
    run_train(common + ['--max_iters=6', '--init_from=resume'], str(out), toy_data)
    after = torch.load(out / 'last.pt', weights_only=True)
    averaged = [k for k, w in after['train_model'].items() if w.is_floating_point()]
    for k in averaged:
        torch.testing.assert_close(after['model'][k], before['model'][k].lerp(after['train_model'][k], 0.25))
    assert sum(not torch.equal(after['model'][k], after['train_model'][k]) for k in averaged) > len(averaged) / 2


CRASH_ON_THIRD_SAVE = """
import runpy, sys, torch
real_save, calls = torch.save, [0]
def flaky_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:  # the power goes out halfway through writing the second eval's checkpoint
        with open(f, 'wb') as fh:
            fh.write(b'half a checkpoint')
        raise OSError('simulated crash during save')
    return real_save(obj, f, *args, **kwargs)
torch.save = flaky_save
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


def test_crash_during_save_keeps_previous_checkpoint(toy_data, tmp_path):
    """A save that dies midway leaves the previous ckpt.pt and last.pt whole and loadable."""
    out = str(tmp_path / 'out')
    p = run_train(['--max_iters=20', '--eval_interval=5', '--lr=1e-5', '--min_lr=1e-6'], out, toy_data, check=False,
                  runner=CRASH_ON_THIRD_SAVE)
    assert p.returncode != 0 and 'simulated crash during save' in p.stderr
    last = torch.load(os.path.join(out, 'last.pt'), weights_only=True)
    assert last['iter_num'] == 5
    TVLM.from_checkpoint(os.path.join(out, 'ckpt.pt'))


CTRL_C_IN_STEP_8 = """
import runpy, sys, torch
real_clip, calls = torch.nn.utils.clip_grad_norm_, [0]
def clip(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 8:  # Ctrl-C after the 8th step's backward pass, before its update
        raise KeyboardInterrupt
    return real_clip(*args, **kwargs)
torch.nn.utils.clip_grad_norm_ = clip
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


SIGINT_IN_UPDATE_8 = """
import os, runpy, signal, sys, torch
real_update, calls = torch.amp.GradScaler.update, [0]
def update(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 8:  # a real Ctrl-C after the 8th step's optimizer step, before the step is counted
        os.kill(os.getpid(), signal.SIGINT)
    return real_update(self, *args, **kwargs)
torch.amp.GradScaler.update = update
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""

CTRL_C_IN_EVAL_2 = """
import runpy, sys
import prepare
real_batches, calls = prepare.split_batches, [0]
def split_batches(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:  # Ctrl-C in the second evaluation, at iteration 10
        raise KeyboardInterrupt
    return real_batches(*args, **kwargs)
prepare.split_batches = split_batches
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


@pytest.mark.parametrize('runner, stopped_at', [(CTRL_C_IN_STEP_8, 7), (SIGINT_IN_UPDATE_8, 8), (CTRL_C_IN_EVAL_2, 10)],
                         ids=['before the update', 'inside the update', 'in an evaluation'])
def test_ctrl_c_saves_a_checkpoint_that_resumes_the_step_it_cut_short(toy_data, tmp_path, runner, stopped_at):
    """Ctrl-C before a step's update saves last.pt as of the step's start (its batch and its random draws, with
    dropout on); inside the update, once the update is counted; in an evaluation, one that evaluates again on
    resume. Resumed, the run ends bit for bit where an uninterrupted one does, with the same evaluations logged."""
    common = ['--max_iters=12', '--eval_interval=5', '--muon=True', '--dropout=0.1']
    run_train(common, str(tmp_path / 'a'), toy_data)
    p = run_train(common, str(tmp_path / 'b'), toy_data, check=False, runner=runner)
    assert p.returncode == 130 and f'interrupted at iteration {stopped_at}' in p.stdout
    run_train(common + ['--init_from=resume'], str(tmp_path / 'b'), toy_data)
    a, b = (torch.load(tmp_path / d / 'last.pt', weights_only=True)['model'] for d in 'ab')
    assert all(torch.equal(a[k], b[k]) for k in a)
    evals = [[json.loads(line)['iter'] for line in open(tmp_path / d / 'log.jsonl') if '"eval"' in line] for d in 'ab']
    assert evals[0] == evals[1] == [5, 10, 12]


NAN_AFTER_12_STEPS = """
import runpy, sys, torch, tvlm
real_loss, calls = tvlm.answer_loss, [0]
def loss_that_explodes(*args, **kwargs):
    calls[0] += torch.is_grad_enabled()  # training steps only, not evaluations
    loss = real_loss(*args, **kwargs)
    return loss * float('nan') if calls[0] > 12 else loss
tvlm.answer_loss = loss_that_explodes
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(toy_data, tmp_path):
    out = str(tmp_path / 'out')
    p = run_train(['--max_iters=50', '--eval_interval=10'], out, toy_data, check=False, runner=NAN_AFTER_12_STEPS)
    assert p.returncode == 1
    # the loss reaches the host once per log_interval=5 iterations: iteration 13 went bad, 15 reports it
    assert 'loss is nan in the 5 iterations up to 15' in p.stderr and 'HINT' in p.stderr
    assert torch.load(os.path.join(out, 'last.pt'), weights_only=True)['iter_num'] == 10


def test_ddp_two_processes_on_cpu_stay_identical(toy_data, tmp_path):
    """torchrun with 2 gloo processes (Muon and AdamW and the weights' moving average, as config/small.py): rank 0
    checks every rank's weights and average against its own at the end, and again after a resume."""
    out = str(tmp_path / 'out')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'train.py'), f'--data_dir={toy_data}', f'--out_dir={out}', *TINY_MODEL,
           '--batch_size=12', '--questions_per_image=3', '--max_iters=12', '--eval_interval=6', '--grad_accum=2',
           '--device=cpu', '--muon=True', '--ema_decay=0.9']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'world_size=2' in p.stdout
    assert 'ddp: max parameter difference across 2 ranks = 0\n' in p.stdout   # = 0.26 would not pass
    assert torch.load(os.path.join(out, 'last.pt'), weights_only=True)['iter_num'] == 12
    cmd[cmd.index('--max_iters=12')] = '--max_iters=14'                           # and resumed, each rank its own seeds
    p = subprocess.run(cmd + ['--init_from=resume'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert 'ddp: max parameter difference across 2 ranks = 0\n' in p.stdout, p.stdout + p.stderr
    assert torch.load(os.path.join(out, 'last.pt'), weights_only=True)['iter_num'] == 14


def test_ddp_a_nan_on_one_rank_stops_every_rank(toy_data, tmp_path):
    """Rank 1's loss alone turns NaN at the log step: both ranks stop with the message, as the logged loss is the
    ranks' mean (before, rank 1 stopped alone, and torchrun killed rank 0 wherever it was)."""
    runner = tmp_path / 'nan_on_rank_1.py'
    runner.write_text(f"""import os, runpy, sys, torch
sys.path.insert(0, {ROOT!r})
import tvlm
real_loss, calls = tvlm.answer_loss, [0]
def loss(*args, **kwargs):
    calls[0] += torch.is_grad_enabled()  # training steps only
    out = real_loss(*args, **kwargs)
    return out * float('nan') if os.environ['RANK'] == '1' and calls[0] == 10 else out
tvlm.answer_loss = loss
sys.argv[0] = {os.path.join(ROOT, 'train.py')!r}
runpy.run_path(sys.argv[0], run_name='__main__')
""")
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(runner),
           f'--data_dir={toy_data}', f'--out_dir={tmp_path / "out"}', *TINY_MODEL, '--batch_size=12',
           '--questions_per_image=3', '--max_iters=20', '--eval_interval=20', '--log_interval=5', '--device=cpu']
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode != 0 and p.stderr.count('loss is nan in the 5 iterations up to 10') == 2, p.stderr[-2000:]


def test_without_clipping_the_log_has_no_grad_norm(toy_data, tmp_path):
    """--grad_clip=0 computes no gradient norm: the log line leaves it out and log.jsonl holds null, not NaN."""
    p = run_train(['--max_iters=5', '--eval_interval=5', '--grad_clip=0'], str(tmp_path), toy_data)
    assert 'iter 5: ' in p.stdout and 'grad' not in p.stdout.split('iter 5: ')[1].splitlines()[0]
    assert [r['grad_norm'] for r in read_log(str(tmp_path), 'train')] == [None]


def test_bfloat16_autocast_trains_on_the_cpu(toy_data, tmp_path):
    """--dtype=bfloat16 runs the forward under autocast on a CPU too (it was float32 there, whatever it said)."""
    for dtype in ('float32', 'bfloat16'):
        p = run_train(['--max_iters=4', '--eval_interval=2', f'--dtype={dtype}'], str(tmp_path / dtype), toy_data)
        assert f'dtype={dtype}' in p.stdout
    a, b = (torch.load(tmp_path / d / 'last.pt', weights_only=True)['model'] for d in ('float32', 'bfloat16'))
    assert all(torch.isfinite(b[k]).all() for k in b) and not all(torch.equal(a[k], b[k]) for k in a)
    out = str(tmp_path / 'bfloat16')   # val reads the weights in float32, as eval.py does, whatever the step ran in
    assert_val_acc_is_evals(TVLM.from_checkpoint(os.path.join(out, 'ckpt.pt')), read_log(out, 'eval'), toy_data)


def test_bad_input_gives_one_line_errors(toy_data, tmp_path):
    p = run_train(['--max_iters=1'], str(tmp_path / 'o'), str(tmp_path / 'nowhere'), check=False)
    assert p.returncode == 1 and 'run `python prepare.py` first' in p.stderr.strip().splitlines()[-1]
    assert f"`python prepare.py --bdd_root=<your BDD100K folder> --out={tmp_path / 'nowhere'}`" in p.stderr
    p = run_train(['--init_from=resume'], str(tmp_path / 'empty'), toy_data, check=False)
    assert p.returncode == 1 and 'last.pt does not exist' in p.stderr
    p = run_train(['--vit_heads=3'], str(tmp_path / 'o'), toy_data, check=False)
    assert p.returncode == 1 and 'vit_width=32 not divisible by vit_heads=3' in p.stderr
    p = run_train(['--max_iters=0'], str(tmp_path / 'none'), toy_data)
    assert 'no evaluation ran (max_iters=0), so no checkpoint was written' in p.stdout
    assert not os.path.exists(tmp_path / 'none' / 'ckpt.pt')
    cases = (('--batch_size=0', '--batch_size=0 must be 1 or more'), ('--lr=-1.0', '--lr=-1.0 must be > 0'),
             ('--dtype=fp16', "--dtype='fp16' must be"), ('--device=gpu', '--device=gpu is not a device'),
             ('--batch_size=13', 'batch_size=13 must be a multiple of questions_per_image=3'),
             ('--lr=1e-5', '--min_lr=0.0001 must be between 0 and lr=1e-05'), ('--ema_decay=1.0', '--ema_decay=1.0 must'),
             ('--warmup_iters=3000', '--warmup_iters=3000 must be <= lr_decay_iters=2000'),
             ('--word_dropout=1.0', '--word_dropout=1.0 must be in [0, 1)'),
             ('--eval_max_questions=0', '--eval_max_questions=0 must be 1 or more'),
             ('--grad_clip=-1.0', '--grad_clip=-1.0 must be 0 or more'), ('--beta1=1.5', '--beta1=1.5 and'),
             ('--patience=-1', '--patience=-1 must be 0 or more'), ('--out_dir=', '--out_dir is empty'),
             ('--label_smoothing=1.5', 'label_smoothing=1.5 must be in [0, 1)'), ('--vit_mlp=0', 'vit_mlp=0'),
             ('--img_h=96', "unknown config key 'img_h'; the dataset decides img_h (prepare.py's --img_h"),
             (f'--out_dir={os.path.join(toy_data, "meta.json")}', 'meta.json cannot be made a folder'),
             ('--dtype=float16', '--dtype=float16 needs a CUDA GPU'),
             (f'--init_from={tmp_path / "o" / "ckpt.pt"}', 'which this run would overwrite'),
             *[('--wandb_log=True', '--wandb_log=True needs wandb')] * (importlib.util.find_spec('wandb') is None))
    with ThreadPoolExecutor(2) as pool:  # each run is mostly torch's import: two at a time on 2 cores, half the wait
        runs = pool.map(lambda case: run_train([case[0]], str(tmp_path / 'o'), toy_data, check=False), cases)
        for (bad, said), p in zip(cases, runs):
            assert p.returncode == 1 and said in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    swapped = tmp_path / 'swapped'                                   # the same data, its answers named the other way
    shutil.copytree(toy_data, swapped)
    meta = json.load(open(swapped / 'meta.json'))
    json.dump({**meta, 'answers': meta['answers'][::-1]}, open(swapped / 'meta.json', 'w'))
    run_train(['--max_iters=2', '--eval_interval=2'], str(tmp_path / 'r'), toy_data)
    p = run_train(['--init_from=resume', '--max_iters=4'], str(tmp_path / 'r'), str(swapped), check=False)
    assert p.returncode == 1 and 'have different answer classes ---> HINT' in p.stderr, p.stderr


def test_fine_tune_from_another_datasets_checkpoint(toy_data, tmp_path):
    """Pretrain on the toy set, then fine-tune on a prepared BDD100K tree (world.py's, in BDD's 2018 layout) with
    other words and answers: the run starts from the checkpoint and writes a loadable model for the new data, with
    its abstention threshold: the most p(can't answer) that an in-scope val question gets, in any phrasing (here
    every phrasing is marked held out, so a threshold fitted on seen phrasings alone would be left at 1, never)."""
    import eval as ev
    import world
    run_train(['--max_iters=10', '--eval_interval=10'], str(tmp_path / 'pre'), toy_data)
    tree, data = str(tmp_path / 'bdd'), str(tmp_path / 'data')
    with prepare.make_pool(1) as pool:
        world.render_tree(tree, 3, 60, 6, pool)
    prepare.build(dict(bdd_root=tree, out=data, max_images=0, weather='', timeofday='', img_h=32, img_w=48,
                       max_q_len=16, max_answer_len=16, seed=1, workers=1, force=False, synth_train=0, synth_val=0,
                       train_per_family=3), tree, 'bdd', 'bdd100k')
    meta = prepare.load_meta(data)
    json.dump({**meta, 'held_out': [True] * len(meta['held_out'])}, open(os.path.join(data, 'meta.json'), 'w'))
    out = str(tmp_path / 'fine')
    p = run_train([f'--init_from={tmp_path / "pre" / "ckpt.pt"}', '--max_iters=6', '--eval_interval=3', '--augment',
                   '--dec_depth=2'], out, data)
    assert 'decides dec_depth=1 (not 2)' in p.stdout
    assert 'fine-tuning from' in p.stdout and 'dec.embed.weight (' in p.stdout and 'head.weight (' in p.stdout
    model = TVLM.from_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert model.answers == prepare.ANSWERS and len(model.tokenizer) > 10
    threshold, model.abstain_above = model.abstain_above, 1.0                          # scores without the threshold
    val = prepare.open_split(data, 'val')
    p_cant = torch.from_numpy(ev.predict(model, val, 64)[0]).softmax(1)[:, model.answers.index(CANT)].numpy()
    sets_it = val['answers'] != model.answers.index(CANT)
    assert sets_it.any() and threshold == pytest.approx(p_cant[sets_it].max(), rel=1e-4) and threshold < 1
    p = run_train([f'--init_from={tmp_path / "nowhere.pt"}'], out, data, check=False)
    assert p.returncode == 1 and 'no checkpoint at' in p.stderr.strip().splitlines()[-1]


def test_generate_mode_learns_to_answer_in_words(toy_data, tmp_path):
    """answer='generate' trains the decoder on 'answer : reason' after the question (loss on those words only);
    eval.py then scores what it writes by exact match."""
    import eval as ev
    out = str(tmp_path / 'gen')
    run_train(['--answer=generate', '--max_iters=120', '--eval_interval=40', '--lr=3e-3', '--hflip'], out, toy_data)
    evals = read_log(out, 'eval')
    assert evals[-1]['val_loss'] < 0.5 * evals[0]['val_loss'] and evals[-1]['val_acc'] > 0.7
    assert_val_acc_is_evals(TVLM.from_checkpoint(os.path.join(out, 'ckpt.pt')), evals, toy_data)
    early = str(tmp_path / 'early')   # 2 steps in the decoder's top word is seldom an answer's: both read past that
    run_train(['--answer=generate', '--max_iters=2', '--eval_interval=2'], early, toy_data)
    assert_val_acc_is_evals(TVLM.from_checkpoint(os.path.join(early, 'ckpt.pt')), read_log(early, 'eval'), toy_data)
    res = ev.evaluate(os.path.join(out, 'ckpt.pt'), out=out, robust_max=9, batch_questions=64)
    gen = res['generation']
    assert gen['exact_match'] > 0.6 and all(':' in x['said'] for x in gen['examples'])


# -----------------------------------------------------------------------------
# the flip augmentation


def test_hflip_swaps_left_and_right_consistently():
    """Mirroring a scene and swapping left/right in each question gives exactly the answers prepare.py's rules
    give the mirrored scene, for every template, on random scenes: so hflip makes only correct examples."""
    import prepare
    from tvlm import Tokenizer
    tok = Tokenizer.build(q for _, q in prepare.TEMPLATES)
    flip_tok, flip_ans = tvlm.mirror_tables(tok, prepare.ANSWERS)
    H, W = 144, 256
    template_of = {tuple(tok.encode(q, 16)[0]): t for t, (_, q) in enumerate(prepare.TEMPLATES)}
    mirrored_template = {t: template_of[tuple(flip_tok[list(ids)])] for ids, t in template_of.items()}
    assert prepare.TEMPLATES[mirrored_template[prepare.TEMPLATES.index(('spatial', 'Is the left lane clear?'))]][1] \
        == 'Is the right lane clear?'
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(300):
        M = rng.integers(1, 12)
        x1, y1 = rng.uniform(0, W - 10, M), rng.uniform(0.3 * H, H - 10, M)
        boxes = np.stack([x1, y1, x1 + rng.uniform(4, 80, M), y1 + rng.uniform(4, 60, M)], 1).clip(0, [W, H, W, H])
        cls = rng.integers(0, len(prepare.BOX_CLASSES), M)
        colour = rng.integers(0, 4, M) * (rng.random() < 0.5)
        attrs = {'timeofday': 'night', 'weather': 'rainy'}
        mirrored = np.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)
        before = {t: prepare.ANSWERS.index(a) for t, a, _ in prepare.candidates(boxes, cls, colour, attrs, H, W)}
        after = {t: prepare.ANSWERS.index(a) for t, a, _ in prepare.candidates(mirrored, cls, colour, attrs, H, W)}
        assert {mirrored_template[t]: flip_ans[a] for t, a in before.items()} == after
        compared += len(before)
    assert compared > 1000
