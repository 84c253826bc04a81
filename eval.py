"""
Evaluate a trained tvlm checkpoint on a split of its dataset: classification, calibration, grounding, detection,
baselines, robustness and error analysis, printed as a report and written to eval.json and PNGs beside the checkpoint.

$ python eval.py --ckpt=out-small/ckpt.pt                      # test split; writes out-small/eval.json + PNGs
$ python eval.py --ckpt=out-small/ckpt.pt --blind_ckpt=out-ablate-blind/ckpt.pt --split=val --out=eval-val
$ python eval.py --compare out-small out-ablate-prefix    # one table of the runs' eval.json headlines
$ python eval.py --ckpt=out-small/ckpt.pt --data_dir=data/bdd100k  # real frames; writes out-small/eval-bdd100k/

The metric functions are pure numpy (no scikit-learn) and importable: tests/test_eval.py checks them by hand.
Calibration follows Guo et al. 2017 (arXiv 1706.04599). The temperature fitted on val is only reported: with
--save_temperature=True it is also written into the checkpoint, and from then on TVLM.answer() and viz.py divide
the logits by it. Off by default, so what a checkpoint answers never depends on whether eval.py ran on it.
"""
import json
import os
import sys

import matplotlib
matplotlib.use('Agg')  # files only: no display on a server or in CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from prepare import (PATCH_LABELS, check_compatible, jpeg, load_meta, make_dir, open_split, patch_labels, side_of,
                     split_batches)
from tvlm import CANT, TVLM, image_attention, load_checkpoint, mirror_tables, pick_device
from viz import draw_boxes, overlay

# -----------------------------------------------------------------------------
# defaults: plain globals, overridden by --key=value (configurator.py)
ckpt = 'out-small/ckpt.pt'
split = 'test'
out = ''                  # eval.json and PNGs; '' = beside the checkpoint (another data_dir: in eval-<its name>/ there)
data_dir = ''             # '' = the dataset the checkpoint was trained on
blind_ckpt = ''           # a question-only model (config/ablate_blind.py) to measure what the image adds
compare = False           # True: the positional arguments are run dirs whose eval.json go into one table
robust_max = 500          # questions (whole images, in file order) for the robustness and flip runs
batch_questions = 256
save_temperature = False  # True: write the temperature fitted on val into the checkpoint (answer() uses it)
device = 'auto'
seed = 1337

N_BINS = 15                                 # equal-width confidence bins for ECE, as in Guo et al.
HIGH_CONF, LOW_CONF = 0.9, 0.5              # an error is confident above HIGH_CONF, a guess below LOW_CONF
MIN_TEMPERATURE_QUESTIONS = 300             # fewer val questions fit a temperature to noise: keep T = 1
BOOTSTRAP_ROUNDS = 1000                     # resamples for the margins' 95% intervals
ROBUSTNESS = {'noise': (8, 16, 32),         # Gaussian sigma, 0-255 scale
              'brightness': (0.5, 0.75, 1.5),   # pixel gain
              'contrast': (0.5, 0.75, 1.5),     # gain around each image's mean
              'occlusion': (0.1, 0.25, 0.5),    # share of patch cells painted grey
              'jpeg': (50, 20, 10)}             # re-compression quality

# -----------------------------------------------------------------------------
# Classification metrics: y, pred int[N] answer ids; scores float[N]


def confusion_matrix(y, pred, n):
    """int[n, n] counts, rows = truth, columns = prediction."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    for what, ids in (('truth', y), ('prediction', pred)):
        bad = ids[(ids < 0) | (ids >= n)]
        if len(bad):  # n * y + pred would silently count it in another cell
            raise ValueError(f"confusion_matrix: {what} id {bad[0]} is outside the {n} answer ids 0..{n - 1}")
    return np.bincount(n * y + pred, minlength=n * n).reshape(n, n)        # (n, n)


def classification(y, pred, n):
    """Accuracy, balanced accuracy, macro and weighted precision/recall/F1, per-answer table and confusion.
    An undefined ratio (no predictions, no support) counts 0, as scikit-learn's zero_division=0 does; macro
    averages run over the answers seen in truth or predictions, balanced accuracy over those in truth."""
    cm = confusion_matrix(y, pred, n)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros(n), where=b > 0)
    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    seen, w = (support > 0) | (predicted > 0), support / support.sum()
    return {'n': int(len(y)), 'accuracy': tp.sum() / len(y), 'balanced_accuracy': recall[support > 0].mean(),
            'macro_precision': precision[seen].mean(), 'macro_recall': recall[seen].mean(), 'macro_f1': f1[seen].mean(),
            'weighted_precision': w @ precision, 'weighted_recall': w @ recall, 'weighted_f1': w @ f1,
            'per_answer': {'precision': precision, 'recall': recall, 'f1': f1, 'support': support},
            'confusion': cm}


def auc(positive, score):
    """AUC-ROC = P(a random positive outscores a random negative), ties counting 1/2 (Mann-Whitney U)."""
    positive, score = np.asarray(positive, bool), np.asarray(score, np.float64)
    if np.isnan(score).any():  # a NaN has no rank: np.unique would sort it last and call it the highest score
        raise ValueError(f"auc: {int(np.isnan(score).sum())} of {len(score)} scores are NaN (NaN logits?)")
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float('nan')
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]                       # 1-based, tied scores share the mean
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def yes_no(positive, margin):
    """Yes/no figures: positive bool[N] (truth is 'yes'), margin float64[N] = logit_yes - logit_no, the model's
    choice between the two answers its question allows; predicted 'yes' when margin > 0."""
    positive, said_yes = np.asarray(positive, bool), np.asarray(margin) > 0
    tp, fn = int((positive & said_yes).sum()), int((positive & ~said_yes).sum())
    fp, tn = int((~positive & said_yes).sum()), int((~positive & ~said_yes).sum())
    return {'n': len(positive), 'tp': tp, 'fn': fn, 'fp': fp, 'tn': tn,
            'sensitivity': tp / (tp + fn) if tp + fn else float('nan'),
            'specificity': tn / (tn + fp) if tn + fp else float('nan'), 'auc': auc(positive, margin)}


def full_report(y, logits, answers):
    """classification() of the argmax of logits float[N, A], plus yes_no() on the questions whose truth is yes or no."""
    res = classification(y, logits.argmax(1), len(answers))
    if 'yes' in answers and 'no' in answers:
        yes, no = answers.index('yes'), answers.index('no')
        m = (y == yes) | (y == no)
        if m.any():  # the margin, not P(yes) / (P(yes) + P(no)): in float32 that is exactly 1.0 past a margin of
            # ~17, and the ties it makes between sure answers pull the AUC towards 1/2
            res['yes_no'] = yes_no(y[m] == yes, logits[m, yes].astype(np.float64) - logits[m, no])
    return res

# -----------------------------------------------------------------------------
# Calibration: confidence = the top answer's probability


def softmax(logits, T=1.0):
    z = logits / T
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def nll(logits, y, T=1.0):
    """Mean negative log-likelihood of the true answers under softmax(logits / T)."""
    z = logits / T
    m = z.max(1)
    return float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(1)) - z[np.arange(len(y)), y]))


def calibration(conf, correct, n_bins=N_BINS):
    """ECE (count-weighted mean |accuracy - confidence| over equal-width bins) and MCE (the worst bin)."""
    b = np.minimum((np.asarray(conf) * n_bins).astype(int), n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    acc = np.bincount(b, correct, n_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(b, conf, n_bins) / np.maximum(count, 1)
    gap = np.abs(acc - mean_conf)
    return {'ece': float(count @ gap / count.sum()), 'mce': float(gap[count > 0].max()),
            'bins': {'count': count, 'accuracy': acc, 'confidence': mean_conf}}


def fit_temperature(logits, y, lo=0.05, hi=20.0, steps=60):
    """The T that minimises NLL(logits / T): NLL is convex in 1/T, hence unimodal in log T, so a golden-section
    search on log T over [lo, hi] finds it without gradients."""
    a, b, g = np.log(lo), np.log(hi), (np.sqrt(5) - 1) / 2
    for _ in range(steps):
        c, d = b - g * (b - a), a + g * (b - a)
        if nll(logits, y, np.exp(c)) < nll(logits, y, np.exp(d)):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))

# -----------------------------------------------------------------------------
# Grounding: does the summary token look at the objects that decide the answer?


def box_shares(boxes, img_h, img_w, patch):
    """float[Hi/p, Wi/p]: the share of each patch cell covered by the union of boxes float[M, 4] (x1, y1, x2, y2 in
    stored-image pixels), measured on the pixel grid (a pixel counts when its centre is inside a box)."""
    ys, xs = np.arange(img_h) + 0.5, np.arange(img_w) + 0.5
    in_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])                      # (M, Hi)
    in_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])                      # (M, Wi)
    inside = (in_y[:, :, None] & in_x[:, None, :]).any(0)                    # (Hi, Wi)
    return inside.reshape(img_h // patch, patch, img_w // patch, patch).mean((1, 3))   # (Hi/p, Wi/p)


def grounding(maps, shares):
    """maps float[Q, P] attention over patches (rows sum to 1), shares float[Q, P] patch share inside the referent
    boxes. Uniform attention puts exactly the boxes' area share inside them: that is the baseline of the ratio."""
    Q, P = maps.shape
    inside, base = (maps * shares).sum(1), shares.mean(1)                    # (Q,), (Q,)
    entropy = -(maps * np.log(np.maximum(maps, 1e-12))).sum(1)               # (Q,) nats
    return {'n': Q, 'inside': inside.mean(), 'baseline': base.mean(), 'ratio': inside.mean() / base.mean(),
            'pointing': (shares[np.arange(Q), maps.argmax(1)] > 0).mean(),  # the top patch touches a referent box
            'pointing_chance': (shares > 0).mean(), 'entropy': entropy.mean(), 'entropy_uniform': np.log(P)}


def average_precision(score, positive):
    """Average precision of scores float[M] for labels bool[M]: the precision at each positive's rank, averaged (a
    scorer that knows nothing gets the positives' share); None without positives."""
    if not positive.any():
        return None
    hits = positive[np.argsort(-score, kind='stable')]                             # (M,) best score first
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].mean())

# -----------------------------------------------------------------------------
# Robustness: image perturbations and the left-right mirror


def perturb(images, kind, strength, rng, patch):
    """uint8[N, Hi, Wi, 3] -> the same images corrupted by `kind` at `strength` (see ROBUSTNESS)."""
    if kind == 'jpeg':
        return np.stack([jpeg(im, strength) for im in images])                # (N, Hi, Wi, 3)
    x = images.astype(np.float32)
    if kind == 'noise':
        x = x + rng.normal(0.0, strength, x.shape)
    elif kind == 'brightness':
        x = x * strength
    elif kind == 'contrast':
        mean = x.mean((1, 2, 3), keepdims=True)
        x = (x - mean) * strength + mean
    elif kind == 'occlusion':
        N, Hi, Wi, _ = x.shape
        cells = rng.random((N, Hi // patch, Wi // patch)) < strength                  # (N, Hi/p, Wi/p)
        x[cells.repeat(patch, 1).repeat(patch, 2)] = 128.0
    else:
        raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(ROBUSTNESS)}")
    return x.clip(0, 255).round().astype(np.uint8)


# -----------------------------------------------------------------------------
# Loading and batched inference


def load(ckpt_path, data_dir, device):
    """(model, checkpoint dict, meta, data_dir), with one-line errors for the mistakes a user can make."""
    try:  # the dict too: its data_dir, its train time, and a place for the temperature
        ck = load_checkpoint(ckpt_path)
        model = TVLM.from_checkpoint(ck, device)
    except (ValueError, FileNotFoundError) as e:  # missing, not a tvlm checkpoint, or one that would run code
        sys.exit(str(e))
    if not data_dir and 'data_dir' in ck and not os.path.exists(os.path.join(ck['data_dir'], 'meta.json')):
        sys.exit(f"{ckpt_path} was trained on {ck['data_dir']}, which is not here (a checkpoint from another "
                 f"machine?) ---> HINT: pass the dataset with --data_dir=, e.g. --data_dir=data/synthetic")
    data_dir = data_dir or ck.get('data_dir', 'data/synthetic')
    meta = load_meta(data_dir)
    check_compatible(model, meta, data_dir)
    return model, ck, meta, data_dir


@torch.no_grad()
def predict(model, arrays, batch_questions, max_images=None, transform=None, attn=False):
    """float32[Q, A] logits for the questions of the first max_images images (all by default), whole images per
    batch so the ViT runs once per image; transform(images, questions) may alter both. With attn=True, also the
    summary token's attention to the image, {name: float32[Q, P]} per tvlm.image_attention map (None for a blind
    model), and from the same ViT pass the patch head's logits on the images asked about: (image rows int64[N],
    float32[N, P, K]) (None without a patch head). -> (logits, maps, patches)"""
    dev = next(model.parameters()).device
    attn = attn and model.cfg.fusion != 'none'
    heads = attn and model.patch_head is not None
    logits, maps = [np.zeros((0, len(model.answers)), np.float32)], {}  # an empty split gives (0, A), not an error
    image_rows, patch_logits = [np.zeros(0, np.int64)], []
    for rows_img, _, images, q, idx in split_batches(arrays, batch_questions, max_images):
        if transform is not None:
            images, q = transform(images, q)
        images = np.require(images, requirements=['C', 'W'])                  # copies read-only memmaps and views
        out = {} if attn else None
        lg, _ = model(torch.from_numpy(images).to(dev), torch.from_numpy(q).to(dev),
                      image_idx=torch.from_numpy(idx).to(dev), out=out)
        logits.append(model.answer_logits(lg, torch.from_numpy(q).to(dev)).float().cpu().numpy())  # (Q', A)
        if attn:  # the summary token's row of each map: the position the answer is read from
            rows = torch.arange(len(q), device=dev)
            for name, m in image_attention(out):
                maps.setdefault(name, []).append(m[rows, out['summary_idx']].cpu().numpy())  # (Q', P)
        if heads:
            image_rows.append(rows_img)
            patch_logits.append(model.patch_head(out['vis']).float().cpu().numpy())   # (N', P, K)
    patches = (np.concatenate(image_rows), np.concatenate(patch_logits)) if heads and patch_logits else None
    return np.concatenate(logits), ({k: np.concatenate(v) for k, v in maps.items()} if attn else None), patches


@torch.no_grad()
def generate_all(model, arrays, batch_questions, abstained):
    """Generate mode: the greedy 'answer: reason' text for every question of a split, in file order; where
    abstained bool[Q] (predict's answer is "can't answer": a word the model does not know, or p(can't answer) above
    its abstain_above) it is "can't answer", as from TVLM.answer(), whatever the decoder writes."""
    dev, said = next(model.parameters()).device, []
    for _, q_rows, images, q, idx in split_batches(arrays, batch_questions):
        images = torch.from_numpy(np.require(images, requirements=['C', 'W'])).to(dev)
        lengths, text = (q != 0).sum(1), [''] * len(q)
        for L in np.unique(lengths):  # generate() takes prompts of one length: one call per question length
            rows = np.flatnonzero(lengths == L)
            seq = model.generate(images, torch.from_numpy(q[rows, :L]).to(dev), model.cfg.max_answer_len,
                                 torch.from_numpy(idx[rows]).to(dev))
            for r, s in zip(rows, seq[:, L:].tolist()):
                text[r] = CANT if abstained[q_rows][r] else model.tokenizer.decode(s)
        said += text
    return said

# -----------------------------------------------------------------------------
# The report's sections: each takes the predictions, returns plain numbers for eval.json, and draws its plot


def by_group(hit, group, names):
    """Accuracy per group (a family, a template, a phrasing): {name: {'n', 'accuracy'}} over the groups asked."""
    group = np.asarray(group, np.int64)
    n, right = np.bincount(group, minlength=len(names)), np.bincount(group, hit, len(names))
    return {names[i]: {'n': int(n[i]), 'accuracy': right[i] / n[i]} for i in np.flatnonzero(n)}


def calibration_section(logits, y, val_logits, val_y, out_dir):
    """ECE, MCE and NLL before and after temperature scaling (T fitted on val), and reliability.png."""
    if len(val_y) >= MIN_TEMPERATURE_QUESTIONS:
        T, how = fit_temperature(val_logits, val_y), f"fitted on {len(val_y):,} val questions"
    else:
        T, how = 1.0, f"val has {len(val_y):,} questions: too few to fit a temperature, T = 1"
    res = {'temperature': T, 'temperature_from': how, 'saved': False}  # evaluate() sets 'saved'
    for name, t in (('before', 1.0), ('after', T)):
        p = softmax(logits, t)
        res[name] = {**calibration(p.max(1), p.argmax(1) == y), 'nll': nll(logits, y, t)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    centres = (np.arange(N_BINS) + 0.5) / N_BINS
    for ax, name in zip(axes, ('before', 'after')):
        bins = res[name]['bins']
        ax.bar(centres, bins['accuracy'], width=1 / N_BINS, edgecolor='k', alpha=0.7, label='accuracy in bin')
        ax.plot([0, 1], [0, 1], 'r--', label='perfectly calibrated')
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel='confidence',
               title=f"T = {1.0 if name == 'before' else T:.2f}: ECE {res[name]['ece']:.3f}, NLL {res[name]['nll']:.3f}")
    axes[0].set_ylabel('accuracy')
    axes[0].legend(loc='upper left')
    save_fig(fig, os.path.join(out_dir, 'reliability.png'))
    return res


def layer_average(maps):
    """{name: float[Q, P]} -> float[Q, P]: every layer's and kind's map averaged, as viz.py's 'layer average'."""
    return np.mean(list(maps.values()), axis=0)


def grounding_section(maps, arrays, cfg, families):
    """grounding() of the layer-averaged maps, of each map of predict() and of each family, over the questions
    that have referent boxes."""
    avg = layer_average(maps)                                                 # (Q, P)
    ref_off, refs, boxes = np.asarray(arrays['ref_offsets']), np.asarray(arrays['referents']), np.asarray(arrays['boxes'])
    has = np.flatnonzero(np.diff(ref_off[:len(avg) + 1]) > 0)
    if len(has) == 0:
        return None
    shares = np.stack([box_shares(boxes[refs[ref_off[j]:ref_off[j + 1]]], cfg.img_h, cfg.img_w, cfg.patch).ravel()
                       for j in has])                                         # (Qr, P)
    res = grounding(avg[has], shares)
    res['per_layer'] = {name: grounding(m[has], shares) for name, m in maps.items()}
    fam = arrays['family'][has]
    res['per_family'] = {f: grounding(avg[has[fam == i]], shares[fam == i])
                         for i, f in enumerate(families) if (fam == i).any()}
    return res


def detection_section(patches, arrays, patch):
    """The patch head's average precision per label (prepare.PATCH_LABELS) over every patch of the images predict()
    gave its logits for (`patches`: rows, float[N, P, K]), beside the label's share of the patches: how well the ViT
    finds each kind of thing, from thousands of patches where the questions about it may number a few dozen (real
    frames). None for a model without a patch head."""
    if patches is None:
        return None
    rows, scores = patches
    K = scores.shape[-1]              # an older checkpoint's head predicts the labels before 'rain', a prefix
    target = patch_labels(arrays, rows, patch)[..., :K].reshape(scores.shape)   # (N, P, K), -1 where not known
    res = {}
    for k, label in enumerate(PATCH_LABELS[:K]):
        known = target[..., k] >= 0                                              # (N, P)
        truth = target[..., k][known] > 0                                        # (patches known,)
        res[label] = {'ap': average_precision(scores[..., k][known], truth), 'n': int(truth.sum()),
                      'share': float(truth.mean()) if truth.size else None}
    return res


def majority_by_template(train_template, train_answers, template, n_templates, n_answers):
    """Question-only baseline: each template's most frequent train answer (the overall one for unseen templates)."""
    counts = np.zeros((n_templates, n_answers), np.int64)
    np.add.at(counts, (np.asarray(train_template, np.int64), np.asarray(train_answers, np.int64)), 1)
    guess = counts.argmax(1)
    guess[counts.sum(1) == 0] = counts.sum(0).argmax()
    return guess[np.asarray(template, np.int64)]


def margin_intervals(hit, image, template, y, fam, sizes, guess_hit=None, rounds=BOOTSTRAP_ROUNDS, seed=0):
    """95% intervals of the model's margin over the majority answer per template, per family and overall (last), in
    points: float[F + 1, 2], nan for a family not asked. A cluster bootstrap: the images are resampled, not the
    questions, since one image's questions stand or fall together. guess_hit bool[Q]: the majority's hits, fixed
    when it was counted on train; None: counted on the evaluated split itself, and so again on every resample. Such
    a majority flatters itself on a small split (each template's commonest answer is commoner in the sample than in
    the world it comes from) and more so on a resample, so the interval is the basic bootstrap's, the margin minus
    the resampled margins' spread about it, which takes that bias out (the percentiles' interval would add it again).
    hit bool[Q] the model's; image, template, y, fam int[Q]; sizes (families, templates, answers)."""
    (F, T, A), N = sizes, int(image.max()) + 1
    drawn = np.random.default_rng(seed).multinomial(N, np.full(N, 1 / N), size=rounds)   # (R, N) draws of each image
    drawn = np.concatenate([np.ones((1, N)), drawn])       # (R + 1, N) float, for BLAS; row 0: the split itself

    def per_image(cell, k, weight=None):   # (R + 1, k): each resample's questions (or their weights) per cell
        return drawn @ np.bincount(image * k + cell, weight, N * k).reshape(N, k)
    n, model = per_image(fam, F), per_image(fam, F, hit.astype(np.float64))
    if guess_hit is None:   # a template's majority answer gets its most frequent answer's count right
        best = per_image(template * A + y, T * A).reshape(-1, T, A).max(2)         # (R + 1, T)
        family_of = np.zeros(T, np.int64)
        family_of[template] = fam
        major = best @ np.eye(F)[family_of]                                         # (R + 1, F)
    else:
        major = per_image(fam, F, guess_hit.astype(np.float64))
    n, model, major = (np.concatenate([x, x.sum(1, keepdims=True)], 1) for x in (n, model, major))
    asked = n[0] > 0
    margin = 100 * (model[:, asked] - major[:, asked]) / np.maximum(n[:, asked], 1)   # (R + 1, asked)
    spread = np.stack([np.nanpercentile(np.where(n[1:, asked] > 0, margin[1:], np.nan), q, axis=0) for q in
                       (97.5, 2.5)], 1)                     # (asked, 2), over the resamples that drew the family
    out = np.full((F + 1, 2), np.nan)
    out[asked] = np.clip(2 * margin[0][:, None] - spread, -100, 100)   # on a few images it can overshoot
    return out


def baseline_section(y, fam, pred, arrays, train, meta, blind_logits, seed=0):
    """Majority-per-template and (given) blind-model accuracy, and how far the model is above each. The majority
    answers are counted on train; a dataset without train questions (BDD's val images alone) counts them on the
    evaluated split itself: an in-sample question prior, the strongest baseline that never looks at the image."""
    acc, per_family = (pred == y).mean(), by_group(pred == y, fam, meta['families'])

    def beaten(hit):  # a baseline's accuracy, overall and per family, each with the model's gap over it
        return {'accuracy': hit.mean(), 'gap': acc - hit.mean(), 'per_family': {
            f: {**x, 'gap': per_family[f]['accuracy'] - x['accuracy']}
            for f, x in by_group(hit, fam, meta['families']).items()}}
    src = train if len(train['answers']) else arrays
    guess = majority_by_template(src['template'], src['answers'], arrays['template'], len(meta['templates']),
                                 len(meta['answers']))
    res = {'majority': {**beaten(guess == y), 'counted_on': 'train' if src is train else 'this split',
                        'per_template': by_group(guess == y, arrays['template'], meta['templates'])}}
    sizes = len(meta['families']), len(meta['templates']), len(meta['answers'])
    interval = margin_intervals(pred == y, arrays['image_idx'].astype(np.int64), arrays['template'].astype(np.int64),
                                y, fam, sizes, None if src is arrays else guess == y, seed=seed)
    res['majority']['gap_interval'] = interval[-1]
    for i, f in enumerate(meta['families']):
        if f in res['majority']['per_family']:
            res['majority']['per_family'][f]['gap_interval'] = interval[i]
    if blind_logits is not None:
        res['blind'] = beaten(blind_logits.argmax(1) == y)
    return res


def robustness_section(model, arrays, logits, robust_max, batch_questions, seed, out_dir):
    """Accuracy under each perturbation on the first ~robust_max questions, flip consistency, robustness.png."""
    q_off = arrays['q_offsets']
    n_img = max(1, int(np.searchsorted(q_off, robust_max, side='right')) - 1)
    nq, rng, p = int(q_off[n_img]), np.random.default_rng(seed), model.cfg.patch
    y = arrays['answers'][:nq].astype(np.int64)
    accuracy = lambda transform: (predict(model, arrays, batch_questions, n_img, transform)[0].argmax(1) == y).mean()
    res = {'n': nq, 'clean': (logits[:nq].argmax(1) == y).mean(), 'accuracy': {}}
    for kind, strengths in ROBUSTNESS.items():
        res['accuracy'][kind] = {str(s): accuracy(lambda im, q: (perturb(im, kind, s, rng, p), q)) for s in strengths}
    # a mirrored scene asks the mirrored question: left and right swap in the question and in the answer
    tok, ans = mirror_tables(model.tokenizer, model.answers)
    flipped = predict(model, arrays, batch_questions, n_img, lambda im, q: (im[:, :, ::-1], tok[q]))[0].argmax(1)
    agree, sided = flipped == ans[logits[:nq].argmax(1)], (tok[arrays['questions'][:nq]] != arrays['questions'][:nq]).any(1)
    res['flip'] = {'consistency': agree.mean(), 'n_left_right': int(sided.sum()), 'mirror': model.cfg.mirror,
                   'consistency_left_right': agree[sided].mean() if sided.any() else float('nan'),
                   'accuracy': (flipped == ans[y]).mean()}
    fig, axes = plt.subplots(1, len(ROBUSTNESS), figsize=(3.2 * len(ROBUSTNESS), 3), sharey=True)
    for ax, (kind, accs) in zip(axes, res['accuracy'].items()):
        ax.plot(range(len(accs) + 1), [res['clean'], *accs.values()], 'o-')
        ax.set(xticks=range(len(accs) + 1), xticklabels=['clean', *accs], title=kind, ylim=(0, 1))
    axes[0].set_ylabel(f'accuracy ({nq} questions)')
    save_fig(fig, os.path.join(out_dir, 'robustness.png'))
    return res


def confidence_errors(conf, correct, high=HIGH_CONF, low=LOW_CONF):
    """Shares of the errors made with confidence >= high and < low, and the error rate within each band."""
    wrong, hi, lo = ~np.asarray(correct, bool), conf >= high, conf < low
    rate = lambda m: wrong[m].mean() if m.any() else float('nan')
    return {'n_errors': int(wrong.sum()), 'high_conf_share': hi[wrong].mean() if wrong.any() else float('nan'),
            'low_conf_share': lo[wrong].mean() if wrong.any() else float('nan'),
            'high_conf_error_rate': rate(hi), 'low_conf_error_rate': rate(lo)}


def phrasing_section(pred, y, fam, arrays, meta, abstain_above=1.0, k=8):
    """Questions as people ask them: in-scope accuracy on seen and held-out phrasings (val and test ask each question
    in one of each, on the same image), overall and per family; how often out-of-scope questions get "can't answer"
    (seen, held-out and new-word ones apart), how often in-scope ones do (false abstention), the model's threshold
    on p(can't answer) that is part of it (TVLM.abstain_above); and the k phrasings answered worst. None for a
    dataset without phrasings or without "can't answer"."""
    if 'phrasings' not in meta or CANT not in meta['answers']:
        return None
    ph = arrays['phrasing'].astype(np.int64)
    held, new = np.asarray(meta['held_out'], bool)[ph], np.asarray(meta['new_words'], bool)[ph]
    oos = fam == meta['families'].index('out of scope')
    hit, abstained = pred == y, pred == meta['answers'].index(CANT)
    share = lambda x, m: {'n': int(m.sum()), 'rate': x[m].mean() if m.any() else float('nan')}
    acc = lambda m: {'n': int(m.sum()), 'accuracy': hit[m].mean() if m.any() else float('nan'),
                     'per_family': by_group(hit[m], fam[m], meta['families'])}
    per = by_group(hit, ph, range(len(meta['phrasings'])))                    # keyed by phrasing id
    worst = sorted(per, key=lambda j: (per[j]['accuracy'], -per[j]['n']))[:k]  # lowest accuracy, then most asked
    return {'accuracy': {'seen': acc(~oos & ~held), 'unseen': acc(~oos & held)},
            'abstention': {'seen': share(abstained, oos & ~held), 'unseen': share(abstained, oos & held & ~new),
                           'new_words': share(abstained, oos & new)},
            'false_abstention': share(abstained, ~oos), 'abstain_above': abstain_above,
            'worst': [{'phrasing': meta['phrasings'][j], 'held_out': meta['held_out'][j], **per[j]} for j in worst]}


def split_answer(text):
    """'yes: a car is close on the left' -> ('yes', 'a car is close on the left')."""
    answer, _, reason = text.partition(':')
    return answer.strip(), reason.strip()


def generation_section(said, arrays, y, fam, meta, tokenizer, k=6):
    """Generate mode: exact match of the answer words, and how often the reason names the class and side of an
    object that decided the answer (one of the rules' referents: for "Is there a car?" any visible car), on right
    answers and on errors; and, stricter, the class and side of the stored reason (the nearest such object)."""
    truth = [split_answer(tokenizer.decode(t)) for t in arrays['answer_text']]
    got = [split_answer(t) for t in said]
    hit = np.array([g[0] == meta['answers'][a] for g, a in zip(got, y)])
    classes = sorted(meta['box_classes'], key=len, reverse=True)  # 'traffic light' is found before 'light' could be

    def facts(reason):
        padded = f' {reason} '
        return (next((c for c in classes if f' {c} ' in padded), None),
                next((side for side in ('left', 'right', 'ahead') if f' {side} ' in padded), None))
    said_f, true_f = [facts(r) for _, r in got], [facts(r) for _, r in truth]
    named = np.array([all(f) for f in true_f])                   # the deciding fact is an object on a side
    off, refs, box_class = arrays['ref_offsets'], arrays['referents'], arrays['box_class']
    sides = [s.split()[-1] for s in side_of(np.asarray(arrays['boxes']), meta['img_h'], meta['img_w'])]  # per box
    deciding = lambda j: {(meta['box_classes'][box_class[r]], sides[r]) for r in refs[off[j]:off[j + 1]]}
    # a referent's fact, or the stored reason's own: "no car is close on the right" names a side no referent holds
    one_of = np.array([n and s in deciding(j) | {t} for j, (n, s, t) in enumerate(zip(named, said_f, true_f))])
    same = np.array([s == t for s, t in zip(said_f, true_f)])
    rate = lambda ok, m: ok[m].mean() if m.any() else float('nan')
    return {'exact_match': hit.mean(), 'per_family': by_group(hit, fam, meta['families']),
            'reason_names_object_and_side': {'on_correct': rate(one_of, named & hit), 'n_correct': int((named & hit).sum()),
                                             'on_errors': rate(one_of, named & ~hit), 'n_errors': int((named & ~hit).sum()),
                                             'as_stored_on_correct': rate(same, named & hit)},
            'examples': [{'question': tokenizer.decode(arrays['questions'][j]), 'said': said[j],
                          'truth': ': '.join(truth[j])} for j in range(min(k, len(said)))]}


def error_section(y, probs, maps, arrays, model, names, out_dir, k=10, gallery=8):
    """The most confident errors, confidence_errors(), and failures.png: the worst cases with their layer-averaged
    attention (maps float[Q, P], None for a blind model)."""
    conf, pred = probs.max(1), probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-conf[wrong], kind='stable')][:k]
    img_idx = arrays['image_idx']
    cases = [{'question_idx': int(j), 'image': names[img_idx[j]], 'question': model.tokenizer.decode(arrays['questions'][j]),
              'truth': model.answers[y[j]], 'prediction': model.answers[pred[j]], 'confidence': conf[j]} for j in worst]
    res = {**confidence_errors(conf, pred == y), 'most_confident': cases}
    if len(worst):
        plot_gallery(cases[:gallery], arrays, maps, model.cfg, os.path.join(out_dir, 'failures.png'))
    return res


def plot_gallery(cases, arrays, maps, cfg, path):
    """Each case's image, heatmap and referent boxes, drawn by viz.py's overlay and draw_boxes (one convention)."""
    cols = min(4, len(cases))
    rows = -(-len(cases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, (4 * cfg.img_h / cfg.img_w + 0.6) * rows), squeeze=False)
    ref_off, refs, boxes = arrays['ref_offsets'], arrays['referents'], arrays['boxes']
    for ax, c in zip(axes.flat, cases):
        j = c['question_idx']
        img = np.asarray(arrays['images'][arrays['image_idx'][j]])                   # (Hi, Wi, 3)
        title = f"{c['image']}: {c['question']}\ntruth {c['truth']}, said {c['prediction']} ({c['confidence']:.2f})"
        if maps is None:
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
        else:
            overlay(ax, img, maps[j].reshape(cfg.img_h // cfg.patch, cfg.img_w // cfg.patch), title)  # (Hi/p, Wi/p)
        ref = boxes[refs[ref_off[j]:ref_off[j + 1]]]
        draw_boxes(ax, ref, [''] * len(ref), [True] * len(ref))
    for ax in axes.flat:
        ax.axis('off')
    save_fig(fig, path)


def save_fig(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

# -----------------------------------------------------------------------------
# Putting it together


def plain(x):
    """numpy values -> Python ones, NaN -> None, so eval.json stays strict JSON."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [plain(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return int(x) if isinstance(x, (np.integer, np.bool_)) else x


def write_atomic(path, save):
    """save(tmp_path), then rename: a crash never leaves a half-written checkpoint or eval.json."""
    save(path + '.tmp')
    os.replace(path + '.tmp', path)


def write_json(path, obj):
    def save(tmp):
        with open(tmp, 'w') as f:
            json.dump(plain(obj), f, indent=1, allow_nan=False)
    write_atomic(path, save)


def report_dir(ckpt, ck, data_dir, split):
    """Beside the checkpoint: its own test report there (the eval.json --compare reads), another dataset's (real
    frames) or split's in a folder of its own, so that it never overwrites that one."""
    other = os.path.abspath(data_dir) != os.path.abspath(ck.get('data_dir', data_dir))
    name = '-'.join([os.path.basename(os.path.normpath(data_dir))] * other + [split] * (split != 'test'))
    here = os.path.dirname(os.path.abspath(ckpt))
    return os.path.join(here, f'eval-{name}') if name else here


def save_temperature_into(ckpt, ck, mtime, n_val, cal):
    """Write the report's temperature into the checkpoint (TVLM.from_checkpoint reads it: answer() and viz.py then
    divide the logits by it), unless train.py saved new weights meanwhile or val was too small to fit one."""
    if os.path.getmtime(ckpt) != mtime:
        print(f"{ckpt} changed during the evaluation: its temperature is left alone")
    elif n_val < MIN_TEMPERATURE_QUESTIONS:
        print(f"no temperature was fitted ({cal['temperature_from']}): {ckpt}'s is left alone")
    else:
        ck['temperature'] = cal['temperature']
        write_atomic(ckpt, lambda tmp: torch.save(ck, tmp))
        return True
    return False


def evaluate(ckpt, split='test', out='', data_dir='', blind_ckpt='', robust_max=500, batch_questions=256,
             save_temperature=False, device='cpu', seed=1337):
    """Every section for one checkpoint on one split -> the eval.json dict; writes eval.json and the PNGs to out,
    and with save_temperature the report's temperature into the checkpoint."""
    model, ck, meta, data_dir = load(ckpt, data_dir, device)
    blind = load(blind_ckpt, data_dir, device)[0] if blind_ckpt else None   # a wrong path fails here, before any work
    if blind and blind.cfg.fusion != 'none':
        sys.exit(f"--blind_ckpt={blind_ckpt} sees the image (fusion={blind.cfg.fusion!r}), so it cannot tell what the "
                 f"image adds ---> HINT: train one with config/ablate_blind.py")
    mtime = os.path.getmtime(ckpt)
    arrays, val, train = (open_split(data_dir, s) for s in (split, 'val', 'train'))
    if len(arrays['answers']) == 0:  # a BDD tree with only some splits' images prepares the others empty
        sys.exit(f"the {split} split of {data_dir} has no questions ---> HINT: evaluate a split that has some "
                 f"(--split=train|val|test), or re-run prepare.py with images for this one")
    out = make_dir(out or report_dir(ckpt, ck, data_dir, split))
    y, fam = arrays['answers'].astype(np.int64), arrays['family'].astype(np.int64)
    logits, maps, patches = predict(model, arrays, batch_questions, attn=True)
    probs = softmax(logits)
    res = {'ckpt': ckpt, 'split': split, 'data_dir': data_dir, 'source': meta.get('source'),
           'source_format': meta.get('source_format'), 'n_questions': len(y), 'n_images': len(arrays['q_offsets']) - 1,
           'n_params': model.num_params(), 'train_time': ck.get('train_time'), 'iter_num': ck.get('iter_num'),
           'model_args': ck['model_args'], 'answers': meta['answers'], 'families': meta['families']}
    res['classification'] = {**full_report(y, logits, meta['answers']), 'per_family': {
        f: full_report(y[fam == i], logits[fam == i], meta['answers']) for i, f in enumerate(meta['families']) if (fam == i).any()},
        # a family's figure can hide one of its templates at chance ("Is it raining?" beside "Is it night?")
        'per_template': by_group(probs.argmax(1) == y, arrays['template'], meta['templates'])}
    val_logits = logits if split == 'val' else predict(model, val, batch_questions)[0]  # on val, T is fitted in-sample
    res['calibration'] = calibration_section(logits, y, val_logits, val['answers'].astype(np.int64), out)
    res['grounding'] = None if maps is None else grounding_section(maps, arrays, model.cfg, meta['families'])
    res['detection'] = detection_section(patches, arrays, model.cfg.patch)
    blind_logits = predict(blind, arrays, batch_questions)[0] if blind else None
    res['phrasing'] = phrasing_section(probs.argmax(1), y, fam, arrays, meta, model.abstain_above)
    res['baselines'] = baseline_section(y, fam, probs.argmax(1), arrays, train, meta, blind_logits, seed)
    res['robustness'] = robustness_section(model, arrays, logits, robust_max, batch_questions, seed, out)
    with open(os.path.join(data_dir, f'{split}_names.json')) as f:
        names = json.load(f)
    if model.cfg.answer == 'generate':
        abstained = probs.argmax(1) == (meta['answers'].index(CANT) if CANT in meta['answers'] else -1)
        res['generation'] = generation_section(generate_all(model, arrays, batch_questions, abstained), arrays, y, fam,
                                               meta, model.tokenizer)
    res['errors'] = error_section(y, probs, None if maps is None else layer_average(maps), arrays, model, names, out)
    res['plots'] = ['reliability.png', 'robustness.png'] + (['failures.png'] if res['errors']['most_confident'] else [])
    if save_temperature:  # last: an evaluation that fails on the way leaves the checkpoint as it was
        res['calibration']['saved'] = save_temperature_into(ckpt, ck, mtime, len(val['answers']), res['calibration'])
    res = plain(res)
    write_json(os.path.join(out, 'eval.json'), res)
    return res


def fmt(x, spec='.3f'):
    return '-' if x is None else format(x, spec)


def print_report(r):
    answers, c = r['answers'], r['classification']
    source = ', '.join(filter(None, [r['source'], r['source_format'] and f"{r['source_format']} labels"]))
    print(f"\n{r['ckpt']} on {r['data_dir']} ({source or 'source not recorded'}), {r['split']} split: "
          f"{r['n_questions']:,} questions about {r['n_images']:,} images, {r['n_params'] / 1e6:.2f}M parameters")
    print(f"overall: accuracy {fmt(c['accuracy'])}, balanced accuracy {fmt(c['balanced_accuracy'])}, "
          f"macro P/R/F1 {fmt(c['macro_precision'])}/{fmt(c['macro_recall'])}/{fmt(c['macro_f1'])}, weighted F1 {fmt(c['weighted_f1'])}")
    w = max(len(a) for a in answers)
    print(f"\nper answer:\n  {'answer':<{w}} {'n':>6} {'prec':>6} {'recall':>6} {'f1':>6}")
    pa = c['per_answer']
    for i, a in enumerate(answers):
        unused = pa['support'][i] == 0 and not any(row[i] for row in c['confusion'])   # never asked nor said: no figure
        prf = [fmt(None if unused else pa[k][i]) for k in ('precision', 'recall', 'f1')]
        print(f"  {a:<{w}} {pa['support'][i]:>6} " + ' '.join(f"{v:>6}" for v in prf))
    short = [a[:5] for a in answers]
    print(f"\nconfusion (rows truth, columns prediction):\n  {'':<{w}} " + ' '.join(f"{a:>5}" for a in short))
    for a, row in zip(answers, c['confusion']):
        print(f"  {a:<{w}} " + ' '.join(f"{v:>5}" for v in row))
    yn = c.get('yes_no')
    if yn:
        print(f"\nyes/no ({yn['n']:,} questions): sensitivity {fmt(yn['sensitivity'])}, specificity {fmt(yn['specificity'])}, "
              f"AUC {fmt(yn['auc'])}; TP {yn['tp']}, FN {yn['fn']}, FP {yn['fp']}, TN {yn['tn']}")
    b = r['baselines']
    print(f"\nper family (margin: points above the majority answer per template; its 95% interval from resampling the "
          f"images):\n  {'family':<12} {'n':>6} {'acc':>6} {'bal':>6} {'AUC':>6} {'major':>6} {'margin':>6} "
          f"{'95% interval':>15}" + (f" {'blind':>6}" if 'blind' in b else ''))
    blind_all = b.get('blind')   # the question-only model, when --blind_ckpt gave one
    rows = [(f, fc, b['majority']['per_family'][f], blind_all and blind_all['per_family'][f])
            for f, fc in c['per_family'].items()]
    for f, fc, major, blind in rows + [('overall', c, b['majority'], blind_all)]:
        auc_ = fc['yes_no']['auc'] if 'yes_no' in fc else None
        lo, hi = major['gap_interval']
        print(f"  {f:<12} {fc['n']:>6} {fmt(fc['accuracy']):>6} {fmt(fc['balanced_accuracy']):>6} "
              f"{fmt(auc_):>6} {fmt(major['accuracy']):>6} {100 * major['gap']:>+6.1f} {f'[{lo:+.1f}, {hi:+.1f}]':>15}"
              + (f" {fmt(blind['accuracy']):>6}" if blind else ''))
    print_sections(r)


def print_sections(r):
    cal, g, b, rob, e = r['calibration'], r['grounding'], r['baselines'], r['robustness'], r['errors']
    print_generation(r.get('generation'))
    print_phrasing(r.get('phrasing'))
    print(f"\ncalibration: ECE {fmt(cal['before']['ece'])} -> {fmt(cal['after']['ece'])}, MCE {fmt(cal['before']['mce'])} -> "
          f"{fmt(cal['after']['mce'])}, NLL {fmt(cal['before']['nll'])} -> {fmt(cal['after']['nll'])} "
          f"(temperature {cal['temperature']:.2f}; {cal['temperature_from']})")
    print("  this temperature is " + ("written into the checkpoint: answer() and viz.py now use it" if cal['saved'] else
          "not saved: answer() and viz.py keep using the checkpoint's own (--save_temperature=True writes it)"))
    if g:
        print(f"grounding ({g['n']:,} questions with referents): {fmt(g['inside'])} of the attention inside the boxes, "
              f"which cover {fmt(g['baseline'])} -> ratio {fmt(g['ratio'], '.2f')}x; pointing game {fmt(g['pointing'])} "
              f"(chance {fmt(g['pointing_chance'])}); entropy {fmt(g['entropy'], '.2f')} nats (uniform {fmt(g['entropy_uniform'], '.2f')})")
        for name, parts in (('layer', g['per_layer'].items()), ('family', g['per_family'].items())):
            print(f"  per {name}: " + ', '.join(f"{k} {fmt(x['ratio'], '.2f')}x (pointing {fmt(x['pointing'], '.2f')})"
                                                for k, x in parts))
    if r['detection']:
        print("detection, the patch head's average precision per label over every patch (the label's share of them, "
              "a blind guess): " + ', '.join(f"{k} {fmt(x['ap'])} ({fmt(x['share'])})" for k, x in r['detection'].items() if x['n']))
    m = b['majority']
    print(f"baselines: majority answer per template (counted on {m['counted_on']}) {fmt(m['accuracy'])} "
          f"(gap {fmt(m['gap'], '+.3f')})"
          + (f", blind model {fmt(b['blind']['accuracy'])} (gap {fmt(b['blind']['gap'], '+.3f')})" if 'blind' in b else ''))
    per = r['classification']['per_template']
    least = sorted((t for t in per if m['per_template'][t]['accuracy'] < 1),   # out of scope: nothing to gain
                   key=lambda t: per[t]['accuracy'] - m['per_template'][t]['accuracy'])[:5]
    if least:   # none where each template's majority answers all of its questions (a split of a few frames)
        print("  the templates least above it: " + '; '.join(
            f"{t!r} {fmt(per[t]['accuracy'])} vs {fmt(m['per_template'][t]['accuracy'])} (n={per[t]['n']})" for t in least))
    print(f"robustness, accuracy on the first {rob['n']} questions (clean {fmt(rob['clean'])}):")
    for kind, accs in rob['accuracy'].items():
        print(f"  {kind:<10} " + '  '.join(f"{s:>4}: {fmt(a)}" for s, a in accs.items()))
    fl = rob['flip']
    print(f"  flip consistency {fmt(fl['consistency'])} (left/right questions {fmt(fl['consistency_left_right'])}, "
          f"n={fl['n_left_right']}), accuracy on mirrored images {fmt(fl['accuracy'])}" +
          (" (1 by construction: the model averages every image with its mirror, mirror=True)" if fl['mirror'] else ''))
    yn = r['classification'].get('yes_no')
    print(f"errors: {e['n_errors']:,}; {fmt(e['high_conf_share'])} of them at confidence >= {HIGH_CONF} (before "
          f"temperature scaling), "
          f"{fmt(e['low_conf_share'])} below {LOW_CONF}" + (f"; yes/no questions by the yes-vs-no margin: {yn['fp']} false "
          f"positives, {yn['fn']} false negatives" if yn else '') + "; most confident:")
    for c in e['most_confident']:
        print(f"  {c['confidence']:.3f}  {c['image']}: {c['question']!r} truth {c['truth']}, said {c['prediction']}")
    print(f"wrote eval.json, {', '.join(r['plots'])}")


def print_generation(gen):
    if not gen:
        return
    rs = gen['reason_names_object_and_side']
    print(f"\ngenerated answers: exact match {fmt(gen['exact_match'])} (" + ', '.join(
        f"{f} {fmt(x['accuracy'])}" for f, x in gen['per_family'].items()) + f"); the reason names the deciding "
        f"object and side on {fmt(rs['on_correct'])} of {rs['n_correct']} right answers ({fmt(rs['as_stored_on_correct'])} "
        f"the nearest, as the stored reason), {fmt(rs['on_errors'])} of {rs['n_errors']} errors")
    for x in gen['examples']:
        print(f"  {x['question']!r} -> {x['said']!r} (rules: {x['truth']!r})")


def print_phrasing(p):
    if not p:
        return
    a, ab, fa = p['accuracy'], p['abstention'], p['false_abstention']
    print(f"\nphrasings, in-scope accuracy: seen {fmt(a['seen']['accuracy'])} (n={a['seen']['n']}), held out of training "
          f"{fmt(a['unseen']['accuracy'])} (n={a['unseen']['n']}); per family seen/unseen: " + ', '.join(
              f"{f} {fmt(x['accuracy'])}/{fmt(a['unseen']['per_family'].get(f, {}).get('accuracy'))}"
              for f, x in a['seen']['per_family'].items()))
    print(f"  out of scope answered \"{CANT}\": seen phrasings {fmt(ab['seen']['rate'])} (n={ab['seen']['n']}), held out "
          f"{fmt(ab['unseen']['rate'])} (n={ab['unseen']['n']}), new words {fmt(ab['new_words']['rate'])} "
          f"(n={ab['new_words']['n']}); in scope (false abstention) {fmt(fa['rate'])} (n={fa['n']}); by threshold "
          f"above p({CANT}) = {p['abstain_above']:.3f} (train.py's, from val; 1 = none)")
    print("  worst phrasings: " + '; '.join(f"{x['phrasing']!r}{' (held out)' if x['held_out'] else ''} "
                                            f"{fmt(x['accuracy'])} of {x['n']}" for x in p['worst']))


def compare_runs(dirs, out_dir):
    """One table of the headline numbers of several runs' eval.json (run eval.py on each first)."""
    rows = []
    for d in dirs:
        path = d if d.endswith('.json') else os.path.join(d, 'eval.json')
        if not os.path.isfile(path):
            sys.exit(f"no {path} ---> HINT: run `python eval.py --ckpt={os.path.join(d, 'ckpt.pt')}` first")
        try:
            with open(path) as f:
                r = json.load(f)
            g, blind, gen, ph = r['grounding'], r['baselines'].get('blind'), r.get('generation'), r.get('phrasing')
        except (ValueError, KeyError, TypeError, AttributeError) as e:   # ValueError: not JSON
            sys.exit(f"{path} is not an eval.py report ({type(e).__name__}: {e}) ---> HINT: run `python eval.py "
                     f"--ckpt={os.path.join(d, 'ckpt.pt')}` again")
        rows.append({'run': d, 'accuracy': r['classification']['accuracy'],
                     'exact_match': gen['exact_match'] if gen else r['classification']['accuracy'],  # a class is its words
                     **{f: fc['accuracy'] for f, fc in r['classification']['per_family'].items()},
                     'unseen_phrasing': ph and ph['accuracy']['unseen']['accuracy'],
                     'oos_abstain': ph and ph['abstention']['unseen']['rate'], 'ece': r['calibration']['before']['ece'], 'grounding_ratio': g and g['ratio'],
                     'blind_gap': blind and blind['gap'], 'params_M': r['n_params'] / 1e6,
                     'train_min': r['train_time'] and r['train_time'] / 60})
    cols = list(dict.fromkeys(k for row in rows for k in row))
    w = max(len(d) for d in dirs)
    print(f"{'run':<{w}} " + ' '.join(f"{c[:9]:>9}" for c in cols[1:]))
    for row in rows:
        print(f"{row['run']:<{w}} " + ' '.join(f"{fmt(row.get(c), '.3f'):>9}" for c in cols[1:]))
    path = os.path.join(make_dir(out_dir or '.'), 'ablation.json')
    write_json(path, rows)
    print(f"wrote {path}")
    return rows


if __name__ == '__main__':
    _positional = []  # run dirs for --compare
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    _at_least(1, 'batch_questions')
    _at_least(0, 'robust_max', 'seed')
    device = pick_device(device)
    if compare:
        compare_runs(_positional or sys.exit("--compare needs run dirs: python eval.py --compare out-a out-b"), out)
    elif _positional:
        sys.exit(f"unexpected arguments {_positional}: run dirs go with --compare")
    else:
        print_report(evaluate(ckpt, split, out, data_dir, blind_ckpt, robust_max, batch_questions, save_temperature, device, seed))
