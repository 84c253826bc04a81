"""viz.py on tiny fixtures: heatmap geometry, rollout, every mode's PNG, odd image inputs, one-line CLI errors."""
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import prepare  # noqa: E402
import viz  # noqa: E402
from tvlm import CANT, TVLM, TVLMConfig, Tokenizer  # noqa: E402

QUESTIONS = ['is the light red?', 'is there a car on the left?', 'how many cars are close?']
TOK = Tokenizer.build(QUESTIONS)
ANSWERS = ['yes', 'no', '0', '1', '2']
H, W = 32, 48        # non-square, a 4 x 6 grid of 8-pixel patches


def tiny_model(fusion='cross', seed=0):
    cfg = TVLMConfig(img_h=H, img_w=W, patch=8, vit_width=32, vit_depth=2, vit_heads=2, vit_mlp=64, dec_width=32,
                     dec_depth=2, dec_heads=4, dec_kv_heads=2, dec_mlp=64, vocab_size=len(TOK), max_q_len=12,
                     n_answers=len(ANSWERS), fusion=fusion)
    torch.manual_seed(seed)
    model = TVLM(cfg, TOK, ANSWERS).eval()
    for p in model.parameters():  # larger than the real init, so attention is peaked and answers are not uniform
        nn.init.normal_(p, std=0.3)
    return model


def save_checkpoint(model, path):
    """The keys train.py's save_checkpoint writes that loading needs, plus a few plain ones."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'model': model.state_dict(), 'model_args': asdict(model.cfg), 'tokenizer': model.tokenizer.to_dict(),
                'answers': model.answers, 'families': ['exist', 'count'], 'temperature': 1.0, 'iter_num': 0}, path)


def write_dataset(d, tok=TOK, n=6, seed=0):
    """A contract-format split 'val' with n images, 2 boxes and 2 questions each; question 0 of each image has
    the image's first box as its referent."""
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    ids = np.stack([tok.encode(QUESTIONS[j % 2], 12)[0] for j in range(2 * n)])
    arrays = dict(images=rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
                  boxes=np.tile(np.array([[2, 3, 20, 17], [30, 8, 46, 30]], np.float32), (n, 1)),
                  box_class=np.tile(np.array([0, 1], np.int16), n), box_colour=np.zeros(2 * n, np.int8),
                  box_offsets=np.arange(0, 2 * n + 1, 2),
                  questions=ids.astype(np.uint16), answer_text=np.zeros((2 * n, 4), np.uint16),
                  answers=np.tile(np.array([0, 1], np.int16), n),
                  family=np.tile(np.array([0, 1], np.uint8), n), template=np.tile(np.array([0, 1], np.int16), n),
                  phrasing=np.tile(np.array([0, 1], np.int16), n),
                  image_idx=np.repeat(np.arange(n), 2).astype(np.int32), q_offsets=np.arange(0, 2 * n + 1, 2),
                  referents=np.arange(0, 2 * n, 2).astype(np.int32),
                  ref_offsets=np.concatenate([[0], np.repeat(np.arange(1, n + 1), 2)]).astype(np.int64),
                  rain=np.zeros(n, np.int8))
    for name, a in arrays.items():
        np.save(os.path.join(d, f'val_{name}.npy'), a)
    with open(os.path.join(d, 'val_names.json'), 'w') as f:
        json.dump([f'val-{i}' for i in range(n)], f)
    meta = dict(format_version=prepare.FORMAT_VERSION, tokenizer=tok.to_dict(), answers=ANSWERS, families=['exist', 'count'],
                box_classes=['car', 'pedestrian'], img_h=H, img_w=W, max_q_len=12, max_answer_len=4, mean=[128.0] * 3, std=[64.0] * 3)
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    return meta, {name: np.load(os.path.join(d, f'val_{name}.npy'), mmap_mode='r') for name in arrays}


def png_size(fig, path):
    fig.savefig(path)
    assert os.path.getsize(path) > 1000, f"{path} is nearly empty"
    return Image.open(path).size

# -----------------------------------------------------------------------------
# Geometry: a patch's attention lands on that patch's pixels


@pytest.mark.parametrize('i, j', [(0, 0), (0, 5), (3, 0), (3, 5), (1, 2), (2, 4)])
def test_heatmap_peak_lies_in_the_patch_rectangle(i, j):
    """All mass on patch (i, j) of a 4 x 6 grid over a 40 x 90 image: every pixel at the maximum lies in rows
    10i..10i+9 and columns 15j..15j+14, and the map falls off outside the rectangle."""
    att = np.zeros((4, 6))
    att[i, j] = 1.0
    heat = viz.heatmap_to_pixels(att, 40, 90)
    assert heat.shape == (40, 90)
    ys, xs = np.nonzero(heat >= heat.max() - 1e-6)
    assert (10 * i <= ys).all() and (ys < 10 * i + 10).all(), f"peak rows {ys.min()}..{ys.max()} outside patch row {i}"
    assert (15 * j <= xs).all() and (xs < 15 * j + 15).all(), f"peak cols {xs.min()}..{xs.max()} outside patch col {j}"
    inside = heat[10 * i:10 * i + 10, 15 * j:15 * j + 15].sum()
    assert inside > 0.5 * heat.sum(), f"only {inside / heat.sum():.0%} of the heat is on the patch"


def test_uniform_attention_gives_a_flat_heatmap():
    heat = viz.heatmap_to_pixels(np.full((3, 5), 1 / 15), 30, 70)
    np.testing.assert_allclose(heat, 1 / 15, rtol=1e-5)


def test_overlay_puts_the_heatmap_on_the_image_pixel_grid():
    img = np.zeros((40, 90, 3), np.uint8)
    att = np.zeros((4, 6))
    att[3, 5] = 1.0
    ax = Figure().subplots()
    viz.overlay(ax, img, att, 'x')
    shown, heat = ax.images
    assert shown.get_extent() == heat.get_extent(), "heatmap and image must span the same pixels"
    y, x = np.unravel_index(np.argmax(heat.get_array()), (40, 90))
    assert y >= 30 and x >= 75, f"bottom-right patch's heat peaks at ({y}, {x})"


def test_attention_rollout_matches_the_paper():
    """One layer: (mean over heads + I) / 2 for row-stochastic attention; two layers: the product, later on the left."""
    torch.manual_seed(0)
    a1, a2 = torch.rand(2, 3, 5, 5).softmax(-1)                        # (H, P, P) each
    step = lambda a: (a.mean(0) + torch.eye(5)) / 2
    torch.testing.assert_close(viz.attention_rollout([a1]), step(a1))
    R = viz.attention_rollout([a1, a2])
    torch.testing.assert_close(R, step(a2) @ step(a1))
    torch.testing.assert_close(R.sum(-1), torch.ones(5))

# -----------------------------------------------------------------------------
# Attention maps from the model


@pytest.mark.parametrize('fusion', ['cross', 'prefix', 'both'])
def test_attend_reads_the_text_rows(fusion):
    """Maps are (T, gh, gw) per tvlm.image_attention entry; the summary's map depends on the question (the image
    rows of a prefix would not) and is a distribution over the image, prefix rows renormalised as eval.py's are."""
    model = tiny_model(fusion)
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    r1, r2 = (viz.attend(model, img, TOK.encode(q, 12)[0]) for q in QUESTIONS[:2])
    assert [n for n, _ in r1['layers']] == {'cross': ['cross-attn 0', 'cross-attn 1'], 'prefix': ['self-attn 0', 'self-attn 1'],
                                           'both': ['cross-attn 0', 'cross-attn 1', 'self-attn 0', 'self-attn 1']}[fusion]
    assert r1['words'] == ['<bos>', 'is', 'the', 'light', 'red', '?', '<eos>'] and r1['summary'] == 6
    for (name, m1), (_, m2) in zip(r1['layers'], r2['layers']):
        assert m1.shape == (12, 4, 6)
        s1, s2 = m1[r1['summary']], m2[r2['summary']]
        assert np.abs(s1 - s2).max() > 1e-3, f"{name}: the summary's map ignores the question"
        assert abs(s1.sum() - 1) < 1e-5, f"{name}: mass {s1.sum()}"
    torch.testing.assert_close(r1['probs'].sum(), torch.tensor(1.0))

# -----------------------------------------------------------------------------
# The three pictures: each mode writes a PNG of the expected size


@pytest.mark.parametrize('kw, size', [({}, (1200, 290)), ({'per_word': True}, (1200, 530)),
                                      ({'rollout': True}, (1200, 290))])
def test_explain_png_size(tmp_path, kw, size):
    """32x48 input, panels 300 px wide and 240 px tall: input + 2 layers + average = 4 panels in a row;
    per word: is the light red ? <eos> = 6 panels in two rows."""
    fig, top, _ = viz.explain(tiny_model(), np.zeros((H, W, 3), np.uint8), 'Is the light red?', **kw)
    assert png_size(fig, tmp_path / 'h.png') == size
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_an_emoji_the_font_lacks_is_drawn_without_a_warning(tmp_path):
    """A question with an emoji abstains on that unknown word, which the printout names; the figure draws it as a box,
    without matplotlib's missing-glyph warning."""
    fig = Figure()
    fig.suptitle('Is there a car? \U0001F697')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        viz.save(fig, str(tmp_path / 'e.png'))
    assert (tmp_path / 'e.png').stat().st_size > 0


def test_per_word_panels_of_a_generative_model_follow_what_it_writes():
    """answer='generate', per_word: a panel per question word, then one per written word titled 'wrote <word>',
    whose map is the attention of the step that wrote it (the position before the word)."""
    tok = Tokenizer.build(QUESTIONS + ['yes no : a car is close'])
    cfg = TVLMConfig(img_h=H, img_w=W, patch=8, vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64, dec_width=32,
                     dec_depth=2, dec_heads=4, dec_kv_heads=2, dec_mlp=64, vocab_size=len(tok), max_q_len=12,
                     n_answers=2, answer='generate', max_answer_len=5)
    torch.manual_seed(0)
    model, img = TVLM(cfg, tok, ['yes', 'no']).eval(), np.zeros((H, W, 3), np.uint8)
    with torch.no_grad():  # untrained, it may pick <pad> (logit 0 now), which no trained model writes
        model.dec.embed.weight[0].zero_()
    fig, _, _ = viz.explain(model, img, 'Is the light red?', per_word=True)
    ids = tok.encode('Is the light red?', 12)[0][:7]                                     # <bos> .. <eos>
    seq = model.generate(torch.from_numpy(img)[None], torch.from_numpy(ids)[None], 5)[0]
    written = [tok.itos[i] for i in seq[7:].tolist() if tok.itos[i] != '<eos>']
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ['is', 'the', 'light', 'red', '?', '<eos> (summary)'] + [f'wrote {w}' for w in written]
    assert written, "the untrained decoder wrote nothing: pick another seed"
    full, question = (viz.attend(model, img, x)['probs'] for x in (seq.numpy(), ids))
    torch.testing.assert_close(full, question)     # the answer is read at the question's <eos>, whatever follows
    avg = np.mean([m for _, m in viz.attend(model, img, seq.numpy())['layers']], axis=0)     # (T, gh, gw)
    drawn = np.asarray([ax for ax in fig.axes if ax.images][-1].images[-1].get_array())       # the last word's heat
    expected = viz.heatmap_to_pixels(avg[7 + len(written) - 2], *drawn.shape)       # the step before that word
    np.testing.assert_allclose(drawn, expected / expected.max(), rtol=1e-5, atol=1e-6)


def test_the_headline_is_what_answer_says_even_when_the_threshold_abstains():
    """Above abstain_above the pick is "can't answer" at the model's own small probability, as answer() gives it
    (the lift that makes it the pick is no probability); the alternatives follow in the model's own order."""
    answers = ANSWERS + [CANT]
    cfg = dataclasses.replace(tiny_model().cfg, n_answers=len(answers))
    torch.manual_seed(0)
    model = TVLM(cfg, TOK, answers).eval()
    nn.init.normal_(model.head.weight, std=1.0)
    model.abstain_above = 0.0                                            # every question is over the threshold
    img = np.zeros((H, W, 3), np.uint8)
    answer, p, extra = model.answer(img, 'Is the light red?')
    _, top, _ = viz.explain(model, img, 'Is the light red?')
    assert answer == CANT and 'abstain' in extra and top[0] == (answer, pytest.approx(p)) and p < 0.5
    assert top[1][1] >= top[2][1] and CANT not in (top[1][0], top[2][0])


def test_an_unknown_word_abstention_names_the_alternatives_as_the_models_own():
    """The unknown-word rule answers "can't answer" at 1.0, the rule's and no probability: the answers beside it are
    what the model alone would say, and the headline says so instead of listing them as runners-up."""
    answers = ANSWERS + [CANT]
    cfg = dataclasses.replace(tiny_model().cfg, n_answers=len(answers))
    torch.manual_seed(0)
    model = TVLM(cfg, TOK, answers).eval()
    nn.init.normal_(model.head.weight, std=1.0)
    img = np.zeros((H, W, 3), np.uint8)
    fig, top, extra = viz.explain(model, img, 'Is the light purple?')                 # "purple": never seen
    assert top[0] == (CANT, 1.0) and viz.overruled(model, 'Is the light purple?', extra)
    assert top[1][1] >= top[2][1] and CANT not in (top[1][0], top[2][0])              # the model's own order
    assert 'the model alone' in fig._suptitle.get_text()
    fig, top, extra = viz.explain(model, img, 'Is the light red?')
    assert not viz.overruled(model, 'Is the light red?', extra) and 'the model alone' not in fig._suptitle.get_text()

def test_an_image_too_large_to_decode_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / 'big.png'
    Image.new('RGB', (64, 64)).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)               # 64 x 64 is past twice the limit: refused
    with pytest.raises(SystemExit, match=r"cannot read image .*big.png: Image size \(4096 pixels\) exceeds limit"):
        viz.check_image(str(path))


@pytest.mark.parametrize('mode, ext', [('RGB', 'jpg'), ('RGB', 'png'), ('RGBA', 'png'), ('L', 'png'), ('P', 'png')])
def test_any_image_mode_and_aspect(tmp_path, mode, ext):
    """A tall 120x50 picture in any mode: centre-cropped to the model's aspect, shown at 7x the model's size."""
    rgb = np.random.default_rng(1).integers(0, 256, (120, 50, 3), dtype=np.uint8)
    path = tmp_path / f'img.{ext}'
    Image.fromarray(rgb).convert(mode).save(path)
    model = tiny_model()
    fig, top, _ = viz.explain(model, str(path), 'is there a car on the left?')
    assert fig.axes[0].images[0].get_array().shape == (7 * H, 7 * W, 3), "input panel is not the model's crop"
    assert top[0][0] in ANSWERS and abs(sum(model.answer(str(path), 'is there a car on the left?')[2].values()) - 1) < 1e-5


def test_dataset_panels_boxes_and_size(tmp_path):
    """Two panels per question; the box panel has every ground-truth box, the referent in cyan."""
    meta, arrays = write_dataset(tmp_path / 'data')
    model = tiny_model()
    fig = viz.show_questions(model, meta, arrays, [0], 'val')
    assert png_size(fig, tmp_path / 'one.png') == (600, 240)
    boxes = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2 and [p.get_edgecolor()[:3] for p in boxes] == [(0.0, 1.0, 1.0), (1.0, 1.0, 1.0)]
    assert fig.axes[0].texts[0].get_text() == 'car'
    assert png_size(viz.show_questions(model, meta, arrays, [0, 3, 4, 9], 'val'), tmp_path / 'four.png') == (1200, 480)


def test_log_plot_size_and_resumed_runs(tmp_path):
    """A resumed run logs iteration 40 again and the later line wins; a half-written last line is skipped."""
    lines = [dict(kind='train', iter=it, loss=2.0 - it / 100, acc=it / 100, lr=1e-3) for it in (20, 40, 60)]
    lines += [dict(kind='eval', iter=40, val_loss=1.5, val_acc=0.5, val_acc_exist=0.6, val_acc_count=0.3),
              dict(kind='train', iter=40, loss=9.0, acc=0.1, lr=1e-3)]
    path = tmp_path / 'log.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in lines) + '{"kind": "tra')
    train, evals = viz.read_log(path)
    assert [r['iter'] for r in train] == [20, 40, 60] and train[1]['loss'] == 9.0 and len(evals) == 1
    assert png_size(viz.plot_log(str(path)), tmp_path / 'curves.png') == (1300, 360)

# -----------------------------------------------------------------------------
# The command line: the runs start at once (importing torch dominates their time), each test checks one


@pytest.fixture(scope='module')
def cli(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    save_checkpoint(tiny_model(seed=1), str(d / 'out-old' / 'ckpt.pt'))
    save_checkpoint(tiny_model(seed=2), str(d / 'out-new' / 'ckpt.pt'))
    os.utime(d / 'out-old' / 'ckpt.pt', (1e9, 1e9))                     # make "newest" unambiguous
    whole = (d / 'out-new' / 'ckpt.pt').read_bytes()
    (d / 'half.pt').write_bytes(whole[:len(whole) // 2])                  # a copy cut short
    Image.fromarray(np.zeros((90, 160), np.uint8)).save(d / 'grey.png')
    (d / 'broken.jpg').write_text('not a jpeg')
    write_dataset(d / 'data')
    for name in prepare.SPLIT_ARRAYS:  # an empty 'test' split: offsets keep their leading 0, the rest no rows
        a = np.load(d / 'data' / f'val_{name}.npy')
        np.save(d / 'data' / f'test_{name}.npy', a[:1] if name.endswith('offsets') else a[:0])
    (d / 'data' / 'test_names.json').write_text('[]')
    save_checkpoint(tiny_model(fusion='none'), str(d / 'blind.pt'))
    (d / 'folder.png').mkdir()
    (d / 'notes.txt').write_text('a file, not a folder')
    write_dataset(d / 'other', tok=Tokenizer.build(QUESTIONS + ['is it raining?']))
    runs = {'ok': (d, ['grey.png', 'Is the light red?', '--out=new/h.png']),
            'empty_question': (d, ['grey.png', '  ']),
            'no_words': (d, ['grey.png', '???']),
            'long_question': (d, ['grey.png', 'Is there a car? ' * 5 + 'How many cars are there?']),
            'bad_device': (d, ['grey.png', 'Is the light red?', '--device=gpu']),
            'split_typo': (d, ['--data=data', '--split=tset']),
            'jpeg_out': (d, ['grey.png', 'Is the light red?', '--out=h.jpg']),
            'data_and_image': (d, ['--data=data', 'grey.png', 'Is the light red?']),
            'broken_image': (d, ['broken.jpg', 'Is the light red?']),
            'missing_ckpt': (d, ['grey.png', 'Is the light red?', '--ckpt=out-none/ckpt.pt']),
            'truncated_ckpt': (d, ['grey.png', 'Is the light red?', '--ckpt=half.pt']),
            'data': (d, ['--data=data', '--random=3', '--out=d.png']),
            'other_tokenizer': (d, ['--data=other', '--idx=1']),
            'empty_split': (d, ['--data=data', '--split=test', '--random=3']),
            'log_and_image': (d, ['--log=out-new', 'grey.png', 'Is the light red?']),
            'rollout_and_data': (d, ['--data=data', '--rollout=True']),
            'idx_and_image': (d, ['grey.png', 'Is the light red?', '--idx=7']),
            'too_many': (d, ['--data=data', '--random=65']),
            'blind_data': (d, ['--data=data', '--ckpt=blind.pt']),
            'out_is_folder': (d, ['grey.png', 'Is the light red?', '--out=folder.png']),
            'out_under_a_file': (d, ['grey.png', 'Is the light red?', '--out=notes.txt/h.png'])}
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}  # a process per case on a small CI machine: no thread oversubscription
    procs = {k: subprocess.Popen([sys.executable, os.path.join(ROOT, 'viz.py'), *args], cwd=cwd, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for k, (cwd, args) in runs.items()}
    return d, {k: (p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for k, p in procs.items()}


def test_cli_default_checkpoint_and_pngs(cli):
    d, runs = cli
    code, stdout, stderr = runs['ok']
    assert code == 0, stderr
    assert 'using out-new/ckpt.pt' in stdout and 'top-3:' in stdout
    assert Image.open(d / 'new' / 'h.png').size == (1200, 290)                 # its folder made
    code, stdout, stderr = runs['data']
    assert code == 0 and Image.open(d / 'd.png').size == (1200, 480), stderr


def test_no_checkpoint_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        viz.find_checkpoint()
    assert 'python prepare.py && python train.py config/small.py' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('case, words', [('empty_question', 'question is empty'), ('no_words', "'???' has no words"),
                                         ('long_question', 'the question has 31 words and marks, this model reads 10'),
                                         ('bad_device', '--device=gpu is not a device'),
                                         ('split_typo', "data has no split 'tset'"), ('broken_image', 'cannot read image'),
                                         ('jpeg_out', '--out=h.jpg: viz.py draws PNG files'),
                                         ('data_and_image', "--data shows a dataset's questions"),
                                         ('missing_ckpt', 'no checkpoint at out-none/ckpt.pt'),
                                         ('truncated_ckpt', 'half.pt is not a readable torch checkpoint'),
                                         ('other_tokenizer', 'the checkpoint and the dataset other have different vocabulary'),
                                         ('empty_split', 'the test split of data has no questions'),
                                         ('log_and_image', '--log plots a training log'),
                                         ('rollout_and_data', "--per_word and --rollout draw one image's maps"),
                                         ('idx_and_image', "--random, --idx and --split pick a dataset's questions"),
                                         ('too_many', '--random <= 64 (one figure) (got [] and --random=65)'),
                                         ('blind_data', 'blind'), ('out_is_folder', '--out=folder.png cannot be written'),
                                         ('out_under_a_file', 'a file stands where its folder should be')])
def test_cli_errors_are_one_line(cli, case, words):
    code, stdout, stderr = cli[1][case]
    assert code == 1, f"exit code {code}: {stderr}"
    assert words in stderr and len(stderr.strip().splitlines()) == 1, stderr
