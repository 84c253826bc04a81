"""
See what a tvlm model looks at, and how its training went. Every mode saves one PNG (--out, default viz.png).

$ python viz.py photo.jpg "Can I turn right?"                   # answer, top-3, attention per decoder layer
$ python viz.py photo.jpg "Is the light red?" --per_word=True    # one panel per question word (and written word)
$ python viz.py photo.jpg "Is the light red?" --rollout=True     # maps followed back through the ViT
$ python viz.py --data=data/synthetic --split=val --idx=12       # a dataset question: boxes, truth, prediction
$ python viz.py --data=data/synthetic --random=8                 # eight random questions in a grid
$ python viz.py --log=out-small/                                 # loss, accuracy and lr from train.py's log.jsonl

The heatmap is the attention of the summary token (the question's <eos>, the position the answer is read from)
over the image patches, averaged over heads, as tvlm.image_attention reads it (so does eval.py's grounding):
cross-attention for fusion='cross', the text->image block of the self-attention renormalised over the image for
fusion='prefix', both for 'both'. Attention rollout (Abnar & Zuidema, arXiv 2005.00928)
carries a map from the ViT's output tokens back to its input patches. Attention shows where the model looked,
not why it answered: read the maps as hints, not proof. Without --ckpt, the newest out-*/ckpt.pt is used.
"""
import glob
import io
import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state, so importing viz is harmless
from matplotlib.patches import Rectangle
from PIL import Image

from tvlm import TVLM, image_attention, load_image, pick_device

PANEL_W = 3.0    # inches per image panel; at DPI 100, four panels make a 1200 px wide figure
DPI = 100
MAX_COLS = 4

# -----------------------------------------------------------------------------
# Attention maps: from the model's `out` dict to one (gh, gw) grid per layer and text position


def heatmap_to_pixels(att, img_h, img_w):
    """float[gh, gw] patch weights -> float[img_h, img_w], bilinear. With align_corners=False each patch's
    value sits at the centre of the pixel rectangle the patch covered, so the map lands where the patch was."""
    att = torch.as_tensor(np.asarray(att), dtype=torch.float32)[None, None]            # (1, 1, gh, gw)
    return F.interpolate(att, size=(img_h, img_w), mode='bilinear', align_corners=False)[0, 0].numpy()


def attention_rollout(vit_attn):
    """Attention rollout (arXiv 2005.00928): list of float[H, P, P] per ViT layer -> float[P, P]; row i says how
    much output token i draws on each input patch. The identity stands for the residual connection."""
    R = None
    for a in vit_attn:
        a = a.float().mean(0)                                                          # (P, P), heads averaged
        a = a + torch.eye(a.shape[0], device=a.device)
        a = a / a.sum(-1, keepdim=True)                                                # rows sum to 1 again
        R = a if R is None else a @ R                                                  # (P, P)
    return R


@torch.no_grad()
def attend(model, img, ids, rollout=False):
    """uint8[Hi, Wi, 3] image at the model's size and int64[T] question ids -> dict with probs float[A] (the model's
    own, at its temperature, before the abstention rules), pick (the answer class eval.py scores, rules applied), the
    summary position, the text tokens, and layers: [(name, float[T, gh, gw])] from tvlm.image_attention, heads
    averaged, each row summing to 1 over the image."""
    cfg = model.cfg
    if cfg.fusion == 'none':
        raise ValueError("this checkpoint is a blind (question-only) model: it never looks at the image")
    device = next(model.parameters()).device
    out = {}
    ids_t = torch.tensor(ids)[None].to(device)                                         # (1, T); memmaps: copies
    logits, _ = model(torch.tensor(img)[None].to(device), ids_t, out=out)
    T, (gh, gw) = len(ids), out['grid']
    layers = [(name, m[0]) for name, m in image_attention(out)]                        # (T, P) each
    if rollout:  # (T, P) @ (P, P): attention on the ViT's outputs, re-expressed on its input patches
        R = attention_rollout([a[0] for a in out['vit_attn']])
        layers = [(name, a @ R) for name, a in layers]                                 # (T, P) each
    n = int((np.asarray(ids) != 0).sum())                                              # the real tokens
    own = model.answer_logits(logits, ids_t, rules=False)[0].float()                   # (A,), in either mode
    pick = int(model.answer_logits(logits, ids_t).argmax())                            # with the rules, as eval.py
    return {'probs': (own / model.temperature).softmax(-1).cpu(), 'pick': pick,
            'summary': int(out['summary_idx'][0]), 'words': [model.tokenizer.itos[i] for i in ids[:n]],
            'layers': [(name, a.view(T, gh, gw).cpu().numpy()) for name, a in layers]}   # (T, Hi/p, Wi/p) each


def top_answers(model, probs, k=3):
    p, i = probs.topk(min(k, len(probs)))
    return [(model.answers[j], float(q)) for q, j in zip(p, i)]


def overruled(model, question, extra):
    """Did answer() abstain by its unknown-word rule? Then its 1.0 is the rule's, not a probability, and the answers
    shown beside it are what the model alone would have said."""
    return 'abstain' in extra and bool(model.tokenizer.unknown(question))

# -----------------------------------------------------------------------------
# Drawing


def grid(n, aspect, title_lines=2):
    """A Figure with n image panels of aspect img_h / img_w, MAX_COLS to a row, room for a suptitle."""
    cols = min(n, MAX_COLS)
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * PANEL_W, rows * (PANEL_W * aspect + 0.4) + 0.25 * title_lines), dpi=DPI,
                 layout='constrained')
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, axes[:n]


def overlay(ax, img, att, title=''):
    """Draw uint8[h, w, 3] img and float[gh, gw] attention upsampled onto exactly the same h x w pixel grid."""
    heat = heatmap_to_pixels(att, *img.shape[:2])
    heat = heat / (heat.max() or 1)
    ax.imshow(img)
    # opacity follows attention, so unattended pixels stay as they were; same shape as img, so the same extent
    ax.imshow(heat, cmap='inferno', vmin=0, vmax=1, alpha=0.8 * heat)
    ax.set_title(title, fontsize=9)


def draw_boxes(ax, boxes, labels, referent):
    """x1,y1,x2,y2 pixel boxes; the referents, the boxes that decide the answer, drawn thick and cyan."""
    for (x1, y1, x2, y2), label, ref in zip(boxes, labels, referent):
        color, lw = ('cyan', 2.0) if ref else ('white', 0.8)
        # pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates, so a box edge at x is drawn at x - 0.5
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, lw=lw))
        ax.text(x1 - 0.5, y1 - 1.5, label, color=color, fontsize=6, va='bottom')


def save(fig, path):
    """Save as a 256-colour PNG: photos under heatmaps compress badly, and a palette makes them ~3x smaller."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # an emoji in a question is drawn as a box; the printout names it, once is enough
        warnings.filterwarnings('ignore', message='Glyph .* missing from font')
        fig.savefig(buf, format='png')
    img = Image.open(buf).convert('RGB').quantize(256)
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        img.save(path, optimize=True)
    except OSError as e:  # a folder of that name, a file where a folder should be, no permission
        why = 'a file stands where its folder should be' if isinstance(e, FileExistsError) else e.strerror or e
        sys.exit(f"--out={path} cannot be written ({why}) ---> HINT: a PNG file in a folder you can write")
    w, h = img.size
    print(f"saved {path} ({w}x{h} px, {os.path.getsize(path) / 1024:.0f} KB)")

# -----------------------------------------------------------------------------
# The three pictures


def explain(model, image, question, per_word=False, rollout=False):
    """Any image (path, PIL image or array) + question -> (Figure, top-3 [(answer, prob)], answer()'s extra dict:
    the reason or why it abstained). The figure: the model's input, then the summary token's attention per decoder
    layer and averaged, or (per_word) each word's average, and for a generative model each written word's, from
    the step that wrote it."""
    cfg = model.cfg
    ids = model.encode_question(question)
    pixels = load_image(image, cfg.img_h, cfg.img_w)
    if per_word and cfg.answer == 'generate':  # the question and the answer it writes, as one sequence
        device = next(model.parameters()).device
        prompt = torch.from_numpy(ids[:int((ids != 0).sum())])[None].to(device)          # (1, Tq)
        ids = model.generate(torch.from_numpy(pixels)[None].to(device), prompt, cfg.max_answer_len)[0].cpu().numpy()
    r = attend(model, pixels, ids, rollout)
    # load_image again at k times the size: the same centre crop with more pixels, so the display is sharp
    # and the heatmap, spread over that crop, covers the region the patches saw (to within a model pixel:
    # JPEG draft decoding may pick another scale, which rounds the crop differently)
    k = -(-round(PANEL_W * DPI) // cfg.img_w)
    show = load_image(image, k * cfg.img_h, k * cfg.img_w)
    avg = np.mean([m for _, m in r['layers']], axis=0)                                # (T, gh, gw)
    how = ' via rollout' if rollout else ''
    if per_word:  # <bos> is skipped: it reads nothing, so its map is the same for every question
        s, words = r['summary'], r['words']
        panels = [(w + (' (summary)' if t == s else '') + how, avg[t]) for t, w in enumerate(words[:s + 1]) if t]
        # generate mode: a panel per written word, the map of the step that wrote it (the position before)
        panels += [(f'wrote {w}{how}', avg[t - 1]) for t, w in enumerate(words) if t > s and w != '<eos>']
    else:
        s = r['summary']
        panels = [(f'{name}{how}', m[s]) for name, m in r['layers']] + [(f'layer average{how}', avg[s])]
    answer, p, extra = model.answer(pixels, question)  # answer()'s own words are the headline; pixels: decoded once
    top = [(answer, p)] + [(a, q) for a, q in top_answers(model, r['probs']) if a != answer][:2]
    fig, axes = grid(len(panels) + (not per_word), cfg.img_h / cfg.img_w)
    if not per_word:
        axes[0].imshow(show)
        axes[0].set_title('model input (centre crop)', fontsize=9)
    for ax, (title, att) in zip(axes[(not per_word):], panels):
        overlay(ax, show, att, title)
    alts = ', '.join(f'{a} {q:.0%}' for a, q in top[1:])
    why = extra.get('reason') or extra.get('abstain')   # a generative model's reason, or why it abstained
    then = 'the model alone:' if overruled(model, question, extra) else 'then'
    fig.suptitle(f'Q: {question}\nA: {answer} ({p:.0%}; {then} {alts})' + (f'\n{why}' if why else ''), fontsize=11)
    return fig, top, extra


def show_questions(model, meta, arrays, rows, split=''):
    """Dataset question rows -> Figure: per question, the image with its ground-truth boxes (referents in cyan)
    and the summary token's layer-averaged attention; the titles hold question, truth and prediction."""
    fig, axes = grid(2 * len(rows), meta['img_h'] / meta['img_w'], title_lines=0)
    for j, ax_box, ax_heat in zip(rows, axes[0::2], axes[1::2]):
        i = int(arrays['image_idx'][j])
        img = np.asarray(arrays['images'][i])                                         # (Hi, Wi, 3)
        ids = arrays['questions'][j].astype(np.int64)
        r = attend(model, img, ids)
        lo, hi = arrays['box_offsets'][i], arrays['box_offsets'][i + 1]
        refs = set(arrays['referents'][arrays['ref_offsets'][j]:arrays['ref_offsets'][j + 1]].tolist())
        labels = [meta['box_classes'][c] for c in arrays['box_class'][lo:hi]]
        ax_box.imshow(img)
        draw_boxes(ax_box, arrays['boxes'][lo:hi], labels, [b in refs for b in range(lo, hi)])
        question = model.tokenizer.decode(ids.tolist())
        ax_box.set_title(f"{question}\n[{meta['families'][arrays['family'][j]]}, {split} #{j}]", fontsize=8)
        truth = meta['answers'][arrays['answers'][j]]
        pred, p = model.answers[r['pick']], float(r['probs'][r['pick']])
        att = np.mean([m[r['summary']] for _, m in r['layers']], axis=0)            # (gh, gw)
        overlay(ax_heat, img, att, f"truth {truth}, predicted {pred} ({p:.0%})")
        ax_heat.title.set_color('green' if pred == truth else 'red')
        draw_boxes(ax_heat, arrays['boxes'][sorted(refs)], [''] * len(refs), [True] * len(refs))
    return fig


def read_log(path):
    """train.py's log.jsonl -> (train records, eval records), sorted by iteration. A resumed run logs some
    iterations again, so the later line wins; a half-written last line (a run still writing) is skipped."""
    recs = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            recs[r['kind'], r['iter']] = r
    by_kind = lambda kind: [recs[k] for k in sorted(recs) if k[0] == kind]
    return by_kind('train'), by_kind('eval')


def plot_log(path):
    """log.jsonl -> Figure of three panels: loss, accuracy (train, val, val per family), learning rate."""
    train, evals = read_log(path)
    if not train and not evals:
        raise ValueError(f"{path} has no records yet: train.py logs every log_interval iterations")
    fig = Figure(figsize=(13, 3.6), dpi=DPI, layout='constrained')
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    it = lambda rs: [r['iter'] for r in rs]
    ax_loss.plot(it(train), [r['loss'] for r in train], lw=0.8, alpha=0.6, label='train (batch)')
    ax_loss.plot(it(evals), [r['val_loss'] for r in evals], 'o-', lw=1.5, label='val')
    ax_acc.plot(it(train), [r['acc'] for r in train], lw=0.8, alpha=0.6, label='train (batch)')
    ax_acc.plot(it(evals), [r['val_acc'] for r in evals], 'o-', lw=2, color='black', label='val')
    for fam in dict.fromkeys(k for r in evals for k in r if k.startswith('val_acc_')):  # the dataset's family order
        ax_acc.plot(it(evals), [r.get(fam, np.nan) for r in evals], '--', lw=1, label=fam[8:])
    ax_lr.plot(it(train), [r['lr'] for r in train], color='tab:purple')
    for ax, title in ((ax_loss, 'loss'), (ax_acc, 'accuracy'), (ax_lr, 'learning rate')):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=7, ncol=2)
    ax_acc.set_ylim(0, 1)
    ax_lr.ticklabel_format(axis='y', style='sci', scilimits=(0, 0))
    fig.suptitle(f'{path}', fontsize=10)
    return fig

# -----------------------------------------------------------------------------
# Command line


def find_checkpoint():
    """The newest out-*/ckpt.pt under the current directory: the quickstart run writes out-small/ckpt.pt."""
    found = sorted(glob.glob('out-*/ckpt.pt'), key=os.path.getmtime)
    if not found:
        sys.exit("no --ckpt given and no out-*/ckpt.pt here ---> HINT: train one with "
                 "`python prepare.py && python train.py config/small.py`")
    print(f"using {found[-1]}, the newest out-*/ckpt.pt (pick another with --ckpt=PATH)")
    return found[-1]


def load_model(path, device):
    try:
        return TVLM.from_checkpoint(path, device)
    except (ValueError, FileNotFoundError) as e:  # load_checkpoint's one line: missing, not tvlm's, or unsafe
        sys.exit(str(e))


def check_image(path):
    """Decode the file once up front, so a bad image fails before the checkpoint loads, with a one-line reason."""
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, Image.DecompressionBombError) as e:
        reason = getattr(e, 'strerror', None) or str(e).splitlines()[0]   # DecompressionBombError has no strerror
        sys.exit(f"cannot read image {path}: {reason} ---> HINT: pass a JPEG or PNG photo (downscaled, if huge)")


if __name__ == '__main__':
    ckpt = ''             # default: the newest out-*/ckpt.pt
    out = 'viz.png'
    per_word = False      # one panel per question word instead of one per decoder layer
    rollout = False       # carry the maps back through the ViT (attention rollout)
    data = ''             # a prepared dataset, e.g. data/synthetic: show its questions
    split = 'val'
    idx = 0               # question row of the split
    random = 0            # > 0: that many random questions of the split, in a grid
    seed = 0
    log = ''              # an out_dir (or its log.jsonl): plot the training curves
    device = 'cpu'
    _positional = []      # image and question; configurator.py appends the arguments that are not --key=value
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    if not out.lower().endswith('.png'):
        sys.exit(f"--out={out}: viz.py draws PNG files ---> HINT: --out=name.png")

    if log and (data or _positional):  # each of the three modes takes its own flags; any other would be ignored
        sys.exit("--log plots a training log: give it without an image and question or --data")
    if log:
        path = os.path.join(log, 'log.jsonl') if os.path.isdir(log) else log
        if not os.path.isfile(path):
            sys.exit(f"no training log at {path} ---> HINT: pass the out_dir of a train.py run, e.g. --log=out-small/")
        try:
            save(plot_log(path), out)
        except (ValueError, KeyError, TypeError) as e:  # not JSON, or records train.py does not write
            sys.exit(f"cannot plot {path}: {e}")
        sys.exit(0)
    _at_least(0, 'random', 'seed')
    if data and _positional or random > 64:  # an image and question with --data would be silently ignored
        sys.exit(f"--data shows a dataset's questions: give it without an image and question, and --random <= 64 (one "
                 f"figure) (got {_positional} and --random={random})")
    if data and (per_word or rollout):
        sys.exit("--per_word and --rollout draw one image's maps: give them with an image and a question, not --data")
    if not data and (random or idx or split != 'val'):
        sys.exit("--random, --idx and --split pick a dataset's questions: give them with --data=DIR")
    if not data:
        if len(_positional) != 2:
            sys.exit('usage: python viz.py IMAGE "QUESTION" [--ckpt=PATH] [--out=viz.png] (or --data=DIR, --log=DIR)')
        image, question = _positional
        check_image(image)
    model = load_model(ckpt or find_checkpoint(), pick_device(device))
    if data:
        from prepare import check_compatible, load_meta, open_split  # here: the other modes need no dataset
        meta = load_meta(data)
        check_compatible(model, meta, data)
        arrays = open_split(data, split)
        n = len(arrays['answers'])
        if n == 0:  # a BDD tree with only some splits' images prepares the others empty
            sys.exit(f"the {split} split of {data} has no questions ---> HINT: show another with --split=train|val|test")
        if random:
            rows = np.random.default_rng(seed).choice(n, size=min(random, n), replace=False)
        elif not 0 <= idx < n:
            sys.exit(f"--idx={idx} is out of range: the {split} split of {data} has {n} questions")
        else:
            rows = [idx]
        try:
            fig = show_questions(model, meta, arrays, sorted(rows), split)
        except ValueError as e:  # a blind model has no attention to show
            sys.exit(str(e))
        save(fig, out)
    else:
        try:
            fig, top, extra = explain(model, image, question, per_word, rollout)
        except ValueError as e:
            sys.exit(str(e))
        answer, p = top[0]
        ruled = overruled(model, question, extra)
        print(f"Q: {question}\nA: {answer} ({p:.1%})    {'the model alone' if ruled else 'top-3'}: " +
              ', '.join(f'{a} {q:.1%}' for a, q in (top[1:] if ruled else top)))
        if model.cfg.answer == 'generate' and 'reason' in extra:
            print(f"said: {answer}: {extra['reason']} ({p:.1%} for the answer words)")
        if 'abstain' in extra:
            print(f"abstains ({answer}): {extra['abstain']}")
        elif model.tokenizer.unknown(question):  # a model without "can't answer" reads them as <unk> and answers
            print(f"words the model never saw, read as <unk>: {' '.join(model.tokenizer.unknown(question))}")
        save(fig, out)
