"""eval.py: every metric against hand-worked numbers, then an end-to-end run on a tiny dataset and checkpoint."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

import eval as ev
import prepare
import viz
from tvlm import CANT, TVLM, TVLMConfig, Tokenizer, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
# classification


def test_classification_by_hand_with_an_absent_class():
    # answer 3 occurs neither in truth nor in predictions; answer 2 is never predicted
    c = ev.classification(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 4)
    assert c['confusion'].tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(c['per_answer']['precision'], [1 / 2, 2 / 3, 0, 0])
    np.testing.assert_allclose(c['per_answer']['recall'], [1 / 2, 1, 0, 0])
    np.testing.assert_allclose(c['per_answer']['f1'], [1 / 2, 0.8, 0, 0])
    assert c['accuracy'] == pytest.approx(0.6)
    assert c['balanced_accuracy'] == pytest.approx(0.5)                  # (1/2 + 1 + 0) / 3: answer 3 left out
    assert c['macro_precision'] == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert c['macro_recall'] == pytest.approx(0.5)
    assert c['macro_f1'] == pytest.approx((0.5 + 0.8) / 3)
    assert c['weighted_precision'] == pytest.approx(0.4 * 1 / 2 + 0.4 * 2 / 3)
    assert c['weighted_recall'] == pytest.approx(0.6)                    # always equals accuracy
    assert c['weighted_f1'] == pytest.approx(0.4 * 0.5 + 0.4 * 0.8)


def test_constant_predictor():
    c = ev.classification(np.array([0, 1, 1, 0]), np.array([1, 1, 1, 1]), 2)
    assert (c['accuracy'], c['balanced_accuracy']) == (0.5, 0.5)
    np.testing.assert_allclose(c['per_answer']['precision'], [0, 0.5])
    assert c['macro_f1'] == pytest.approx(1 / 3)
    yn = ev.yes_no(np.array([1, 1, 0, 0]), np.full(4, 0.9))
    assert (yn['tp'], yn['fn'], yn['fp'], yn['tn']) == (2, 0, 2, 0)
    assert (yn['sensitivity'], yn['specificity'], yn['auc']) == (1.0, 0.0, 0.5)  # all ties: AUC exactly 1/2


def test_yes_no_by_hand():
    yn = ev.yes_no(np.array([1, 1, 0, 0]), np.array([2.2, -0.4, 0.4, -2.2]))   # margins: 'yes' when > 0
    assert (yn['tp'], yn['fn'], yn['fp'], yn['tn']) == (1, 1, 1, 1)
    assert (yn['sensitivity'], yn['specificity']) == (0.5, 0.5)
    assert yn['auc'] == pytest.approx(3 / 4)                            # -0.4 < 0.4 is the one misordered pair


def test_yes_no_ranks_saturated_margins():
    """Margins 40 and 20 are both 'surely yes', but 40 is surer: the float32 P(yes) / (P(yes) + P(no)) of both is
    exactly 1.0, a tie worth AUC 1/2; the margin keeps them apart."""
    logits = np.array([[40.0, 0.0], [20.0, 0.0]], np.float32)           # columns yes, no; truth yes, then no
    p = ev.softmax(logits)
    assert (p[:, 0] / (p[:, 0] + p[:, 1]) == 1.0).all()                  # what the old score saw: a tie
    yn = ev.full_report(np.array([0, 1]), logits, ['yes', 'no'])['yes_no']
    assert yn['auc'] == 1.0 and (yn['tp'], yn['fp']) == (1, 1)


def test_confusion_matrix_rejects_ids_outside_the_answers():
    with pytest.raises(ValueError, match='truth id 3 is outside the 3 answer ids 0..2'):
        ev.confusion_matrix([0, 3], [0, 1], 3)                           # 3 * 3 + 1 would land in cell (2, ...)
    with pytest.raises(ValueError, match='prediction id -1 is outside'):
        ev.confusion_matrix([0, 1], [0, -1], 3)


def test_auc_matches_brute_force_pair_count():
    rng = np.random.default_rng(0)
    pos, score = rng.random(300) < 0.3, rng.integers(0, 10, 300) / 10     # few distinct scores: many ties
    p, n = score[pos], score[~pos]
    brute = ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (len(p) * len(n))
    assert ev.auc(pos, score) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(ev.auc(np.ones(3, bool), np.arange(3)))              # undefined without a negative
    with pytest.raises(ValueError, match='1 of 3 scores are NaN'):
        ev.auc([True, False, True], [0.2, np.nan, 0.9])                  # np.unique would rank NaN above all

# -----------------------------------------------------------------------------
# calibration


def test_ece_by_hand_and_on_synthetic_sets():
    c = ev.calibration(np.array([0.95, 0.95, 0.05, 0.05]), np.array([1, 0, 0, 0]))
    assert c['ece'] == pytest.approx((2 * 0.45 + 2 * 0.05) / 4) and c['mce'] == pytest.approx(0.45)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 200_000)
    assert ev.calibration(conf, rng.random(conf.shape) < conf)['ece'] < 0.01     # right as often as it says
    over = ev.calibration(np.full(10_000, 0.99), rng.random(10_000) < 0.6)
    assert over['ece'] == pytest.approx(0.39, abs=0.02) and over['mce'] == pytest.approx(over['ece'])


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1.5, (5000, 6))
    y = np.array([rng.choice(6, p=p) for p in ev.softmax(base)])          # labels drawn from softmax(base)
    logits = 5.0 * base                                                  # a model 5x too sure of itself
    T = ev.fit_temperature(logits, y)
    assert T == pytest.approx(5.0, rel=0.1)
    assert ev.nll(logits, y, T) < ev.nll(logits, y) - 0.5

# -----------------------------------------------------------------------------
# grounding, baselines, errors, perturbations


def test_box_shares_are_overlap_fractions():
    s = ev.box_shares(np.array([[8.0, 0.0, 24.0, 16.0]]), 32, 48, 16)      # half of cell (0, 0), half of (0, 1)
    np.testing.assert_allclose(s, [[0.5, 0.5, 0], [0, 0, 0]])
    s = ev.box_shares(np.array([[0.0, 0.0, 16.0, 16.0], [8.0, 0.0, 16.0, 32.0]]), 32, 48, 16)   # union, not sum
    np.testing.assert_allclose(s, [[1, 0, 0], [0.5, 0, 0]])


def test_grounding_on_hand_made_maps():
    shares = np.array([[1.0, 0, 0, 0, 0, 0]])                            # the box is one of six cells
    g = ev.grounding(np.array([[1.0, 0, 0, 0, 0, 0]]), shares)           # all attention inside the box
    assert g['inside'] == 1.0 and g['baseline'] == pytest.approx(1 / 6)
    assert g['ratio'] == pytest.approx(6.0) and g['pointing'] == 1.0 and g['entropy'] == pytest.approx(0.0)
    assert g['pointing_chance'] == pytest.approx(1 / 6)
    u = ev.grounding(np.full((1, 6), 1 / 6), shares)                      # uniform attention: the baseline itself
    assert u['ratio'] == pytest.approx(1.0) and u['entropy'] == pytest.approx(np.log(6))
    off = ev.grounding(np.array([[0, 0, 0, 0, 0, 1.0]]), shares)
    assert off['ratio'] == 0.0 and off['pointing'] == 0.0


def test_average_precision_by_hand():
    # ranked: pos, neg, pos, neg -> precision 1/1 at the first positive, 2/3 at the second
    assert ev.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)) == pytest.approx(5 / 6)
    assert ev.average_precision(np.array([0.1, 0.9, 0.5]), np.array([1, 1, 1], bool)) == pytest.approx(1.0)
    assert ev.average_precision(np.array([0.3, 0.2, 0.1]), np.array([0, 0, 1], bool)) == pytest.approx(1 / 3)
    assert ev.average_precision(np.array([0.5, 0.4]), np.array([0, 0], bool)) is None


def test_majority_by_template():
    guess = ev.majority_by_template([0, 0, 0, 1, 1], [1, 1, 0, 2, 2], [0, 1, 2], n_templates=3, n_answers=3)
    assert guess.tolist() == [1, 2, 1]                                   # template 2 unseen: overall majority


def simulated_split(rng, n_images, yes_share, accuracy, ask=0.3):
    """Questions of n_images images, each template asked of a share `ask` of them: yes with the world's yes_share
    of its template, answered right with the model's accuracy. -> hit, image, template, y, fam (one family a
    template pair: 0, 0, 1, 1, ...)."""
    image, template = np.nonzero(rng.random((n_images, len(yes_share))) < ask)
    y = (rng.random(len(template)) < yes_share[template]).astype(np.int64)
    return rng.random(len(template)) < accuracy[template], image, template, y, template // 2


def test_margin_intervals_cover_the_worlds_margin():
    # the margin a model would show against each template's majority answer in the world the frames come from,
    # against the in-sample majority's intervals from 39 images: most of them hold it, balanced templates or not
    rng = np.random.default_rng(0)
    for yes_share in ([0.5, 0.55, 0.45, 0.5], [0.95, 0.8, 0.6, 0.1]):
        yes_share, accuracy = np.array(yes_share), np.array([0.75, 0.8, 0.6, 0.7])
        truth = 100 * (accuracy - np.maximum(yes_share, 1 - yes_share)).reshape(2, 2).mean(1)   # per family
        held = [ev.margin_intervals(*simulated_split(rng, 39, yes_share, accuracy), (2, 4, 2), rounds=300, seed=k)
                for k in range(100)]
        cover = np.mean([(lo <= t <= hi) for iv in held for (lo, hi), t in zip(iv, truth)])
        assert cover >= 0.8, f"intervals hold the world's margin {cover:.0%} of the time"
        width = np.mean([iv[:2, 1] - iv[:2, 0] for iv in held])
        wider = ev.margin_intervals(*simulated_split(rng, 390, yes_share, accuracy), (2, 4, 2), rounds=300)
        assert 2 < width / np.mean(wider[:2, 1] - wider[:2, 0]) < 4.5   # ten times the images: ~1/sqrt(10) as wide


def test_margin_intervals_against_a_fixed_guess_and_families_not_asked():
    hit, image, template, y, fam = simulated_split(np.random.default_rng(1), 50, np.full(4, 0.5), np.full(4, 0.7))
    same = ev.margin_intervals(hit, image, template, y, fam, (3, 4, 2), guess_hit=hit)   # the model is the baseline
    assert np.array_equal(same[[0, 1, 3]], np.zeros((3, 2))) and np.isnan(same[2]).all()   # family 2: never asked
    # the split's own majority answers, as a model: nothing over the in-sample prior, and the interval says so
    own = ev.majority_by_template(template, y, template, n_templates=4, n_answers=2)
    lo, hi = ev.margin_intervals(own == y, image, template, y, fam, (2, 4, 2))[-1]
    assert lo <= 0 <= hi


def test_confidence_errors():
    e = ev.confidence_errors(np.array([0.95, 0.95, 0.3, 0.7]), np.array([0, 1, 0, 1]))
    assert e['n_errors'] == 2 and (e['high_conf_share'], e['low_conf_share']) == (0.5, 0.5)
    assert (e['high_conf_error_rate'], e['low_conf_error_rate']) == (0.5, 1.0)


def test_perturbations():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 32, 48, 3)).astype(np.uint8)
    assert (ev.perturb(img, 'occlusion', 1.0, rng, 16) == 128).all()
    assert (ev.perturb(img, 'occlusion', 0.0, rng, 16) == img).all()
    assert (ev.perturb(img, 'brightness', 0.5, rng, 16) == np.round(img * 0.5)).all()
    assert (ev.perturb(img, 'contrast', 0.0, rng, 16) == np.round(img.mean((1, 2, 3), keepdims=True))).all()
    assert np.abs(ev.perturb(img, 'noise', 16, rng, 16).astype(float) - img).mean() > 5
    jpg = ev.perturb(img, 'jpeg', 90, rng, 16)
    assert jpg.shape == img.shape and jpg.dtype == np.uint8
    with pytest.raises(ValueError, match='unknown perturbation'):
        ev.perturb(img, 'blur', 1, rng, 16)


def test_phrasing_section_by_hand(capsys):
    """Seen vs held-out accuracy on in-scope questions, abstention on out-of-scope ones by kind, false abstention,
    and the worst phrasings, on seven hand-made questions."""
    meta = {'answers': ['yes', 'no', CANT], 'families': ['exist', 'out of scope'],
            'phrasings': ['Is there a car?', 'Any cars?', 'What color is the car?', 'Is the car fast?', 'Is it snowing?'],
            'held_out': [False, True, False, True, True], 'new_words': [False, False, False, False, True]}
    ph = np.array([0, 1, 0, 1, 2, 3, 4])                  # two in-scope questions, each asked in both phrasings
    fam, y = np.array([0, 0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 2, 1, 0, 2, 0, 2])                # seen right, held out wrong (once abstaining); OOS 2 of 3
    res = ev.phrasing_section(pred, y, fam, {'phrasing': ph}, meta)
    assert res['accuracy']['seen']['accuracy'] == 1.0 and res['accuracy']['unseen']['accuracy'] == 0.0
    assert res['accuracy']['unseen']['per_family'] == {'exist': {'n': 2, 'accuracy': 0.0}}
    ab = res['abstention']
    assert (ab['seen']['rate'], ab['unseen']['rate'], ab['new_words']['rate']) == (1.0, 0.0, 1.0)
    assert res['false_abstention'] == {'n': 4, 'rate': 0.25}
    assert [(w['phrasing'], w['n'], w['accuracy']) for w in res['worst'][:3]] == \
        [('Any cars?', 2, 0.0), ('Is the car fast?', 1, 0.0), ('Is there a car?', 2, 1.0)]
    ev.print_phrasing(res)
    assert "held out of training 0.000 (n=2)" in capsys.readouterr().out
    no_phrasings = {k: v for k, v in meta.items() if k != 'phrasings'}    # a dataset from before phrasings
    assert ev.phrasing_section(pred, y, fam, {'phrasing': ph}, no_phrasings) is None


# -----------------------------------------------------------------------------
def test_reason_names_a_deciding_object_by_hand():
    """A reason counts when it names the class and side of one of the question's referents (any visible car decides
    "Is there a car?"); 'as stored' only when it names the stored reason's own, the nearest."""
    tok = Tokenizer.build(['Is there a car?', 'yes no : a car is visible close ahead on the left right'])
    boxes = np.array([[118, 100, 138, 130], [30, 100, 50, 130], [206, 100, 226, 130]], np.float32)  # ahead, left, right
    # the last: an absence ("no car is close on the left") has no referent; its fact is the stored reason's own
    stored = ['yes : a car is visible ahead'] * 2 + ['yes : a car is visible on the right', 'no : no car is close on the left']
    said = ['yes: a car is visible on the left', 'yes: a car is visible ahead', 'yes: a car is visible on the left',
            'no: no car is close on the left']
    arrays = {'answer_text': np.stack([tok.encode(t, 12)[0][1:] for t in stored]), 'boxes': boxes,
              'questions': np.stack([tok.encode('Is there a car?', 8)[0]] * 4), 'box_class': np.zeros(3, np.int16),
              'referents': np.array([0, 1, 0, 1, 2]), 'ref_offsets': np.array([0, 2, 4, 5, 5])}
    meta = {'answers': ['yes', 'no'], 'families': ['exist'], 'box_classes': ['car'], 'img_h': 144, 'img_w': 256}
    res = ev.generation_section(said, arrays, np.array([0, 0, 0, 1]), np.zeros(4, np.int64), meta, tok)
    rs = res['reason_names_object_and_side']
    assert res['exact_match'] == 1.0 and rs['n_correct'] == 4 and rs['n_errors'] == 0
    assert rs['on_correct'] == pytest.approx(3 / 4) and rs['as_stored_on_correct'] == pytest.approx(2 / 4)


def test_generated_answers_abstain_as_answer_does():
    """generate_all scores what a user gets from answer(): "can't answer" where a word is unknown, or where the first
    answer word or the threshold says so, whatever the decoder would write after it; else the decoder's own words."""
    tok = Tokenizer.build(['Is there a car?', "yes no can't answer :"])
    cfg = TVLMConfig(img_h=32, img_w=48, patch=16, vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64, dec_width=32,
                     dec_depth=1, dec_heads=2, dec_kv_heads=1, dec_mlp=64, vocab_size=len(tok), max_q_len=10,
                     n_answers=3, answer='generate', max_answer_len=6)
    torch.manual_seed(3)  # an untrained model whose first answer word for the car question is not "can't"
    model = TVLM(cfg, tok, ['yes', 'no', CANT]).eval()
    questions = ('Is there a car?', 'Is there a unicorn?')
    q = np.stack([tok.encode(t, 10)[0] for t in questions])                                    # (2, 10)
    arrays = {'images': np.zeros((1, 32, 48, 3), np.uint8), 'questions': q, 'image_idx': np.zeros(2, np.int64), 'q_offsets': np.array([0, 2])}
    for above in (1.0, 0.0):  # no threshold, then one that every question is over
        model.abstain_above = above
        abstained = ev.predict(model, arrays, 64)[0].argmax(1) == 2                            # (2,)
        said = ev.generate_all(model, arrays, 64, abstained)
        assert [ev.split_answer(s)[0] for s in said] == [model.answer(arrays['images'][0], t)[0] for t in questions]
        assert said[1] == CANT and (said[0] == CANT) == (above == 0.0)


# end to end: a tiny dataset in prepare.py's format, a tiny model trained for a moment


QUESTIONS = [('exist', 'Is there a car?'), ('spatial', 'Is there a car on the left?'), ('count', 'How many cars are there?')]
ANSWERS = ['yes', 'no', '0', '1', '2']                                  # '2' never occurs: an absent class


def make_dataset(root, n=(48, 16, 24), H=32, W=48, answers=ANSWERS, seed=0):
    """Each image holds at most one bright 16x16 'car' on a patch cell; the questions ask about it, and its box
    is the referent of the questions it decides."""
    rng = np.random.default_rng(seed)
    tok = Tokenizer.build([q for _, q in QUESTIONS] + ['right'] + ANSWERS + [': a car is close on the left none'])
    # 'right': the flipped left question; the rest: the words of 'answer : reason' (answer_text)
    families = ['exist', 'count', 'spatial']
    os.makedirs(root, exist_ok=True)
    for split, N in zip(('train', 'val', 'test'), n):
        images = rng.integers(0, 60, (N, H, W, 3)).astype(np.uint8)
        cell = rng.integers(-2, 6, N)                                     # < 0: no car
        boxes = np.array([[16 * (c % 3), 16 * (c // 3), 16 * (c % 3) + 16, 16 * (c // 3) + 16] for c in cell if c >= 0], np.float32)
        has, left = cell >= 0, (cell >= 0) & (cell % 3 == 0)
        for i, c in enumerate(cell):
            if c >= 0:
                images[i, 16 * (c // 3):16 * (c // 3) + 16, 16 * (c % 3):16 * (c % 3) + 16] = 230
        a = np.stack([np.where(has, 0, 1), np.where(left, 0, 1), np.where(has, 3, 2)], 1).ravel()
        box_row = np.cumsum(has) - 1                                      # image -> its box row
        refs = [[box_row[i]] if (has[i] and j != 1) or (left[i] and j == 1) else [] for i in range(N) for j in range(3)]
        text = [f"{answers[x]} : {'a car is close on the left' if r else 'none'}" for x, r in zip(a, refs)]
        arrays = {'images': images, 'boxes': boxes.reshape(-1, 4), 'box_class': np.zeros(has.sum(), np.int16),
                  'box_colour': np.zeros(has.sum(), np.int8),
                  'box_offsets': np.concatenate([[0], np.cumsum(has)]).astype(np.int64),
                  'questions': np.tile(np.stack([tok.encode(q, 10)[0] for _, q in QUESTIONS]), (N, 1)).astype(np.uint16),
                  'answer_text': np.asarray([tok.encode(t, 11)[0][1:] for t in text], np.uint16).reshape(-1, 10),
                  'answers': a.astype(np.int16), 'family': np.tile([families.index(f) for f, _ in QUESTIONS], N).astype(np.uint8),
                  'template': np.tile(np.arange(3), N).astype(np.int16), 'phrasing': np.tile(np.arange(3), N).astype(np.int16),
                  'image_idx': np.repeat(np.arange(N), 3).astype(np.int32),
                  'q_offsets': np.arange(0, 3 * N + 1, 3).astype(np.int64),
                  'referents': np.array([r for rs in refs for r in rs], np.int32),
                  'ref_offsets': np.concatenate([[0], np.cumsum([len(r) for r in refs])]).astype(np.int64),
                  'rain': np.full(N, -1, np.int8)}
        for k, v in arrays.items():
            np.save(os.path.join(root, f'{split}_{k}.npy'), v)
        json.dump([f'{split}-{i:04d}' for i in range(N)], open(os.path.join(root, f'{split}_names.json'), 'w'))
    meta = {'format_version': prepare.FORMAT_VERSION, 'source': 'toy', 'tokenizer': tok.to_dict(), 'max_q_len': 10,
            'max_answer_len': 10,
            'answers': answers, 'families': families,
            'templates': [q for _, q in QUESTIONS], 'box_classes': ['car'], 'img_h': H, 'img_w': W,
            'mean': [40.0] * 3, 'std': [60.0] * 3}
    json.dump(meta, open(os.path.join(root, 'meta.json'), 'w'))
    return root


def make_checkpoint(path, data_dir, steps=10, **kw):
    """Train a tiny TVLM on the whole train split for a few steps; save it as train.py's save_checkpoint does."""
    torch.manual_seed(0)
    meta = json.load(open(os.path.join(data_dir, 'meta.json')))
    tok = Tokenizer.from_dict(meta['tokenizer'])
    cfg = TVLMConfig(img_h=32, img_w=48, patch=16, vit_width=32, vit_depth=1, vit_heads=2, vit_mlp=64, dec_width=32,
                     dec_depth=2, dec_heads=2, dec_kv_heads=1, dec_mlp=64, vocab_size=len(tok), max_q_len=10,
                     n_answers=len(meta['answers']), **kw)
    model = TVLM(cfg, tok, meta['answers'], mean=meta['mean'], std=meta['std'])
    load = lambda k: torch.from_numpy(np.load(os.path.join(data_dir, f'train_{k}.npy')).astype(np.int64))
    images, q, a, idx = torch.from_numpy(np.load(os.path.join(data_dir, 'train_images.npy'))), load('questions'), load('answers'), load('image_idx')
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = model(images, q, a, image_idx=idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = {'model': model.state_dict(), 'optimizer': opt.state_dict(), 'model_args': asdict(cfg), 'iter_num': steps,
            'best_val_acc': 0.0, 'train_time': 1.5, 'config': {}, 'tokenizer': tok.to_dict(), 'answers': meta['answers'],
            'families': meta['families'], 'data_dir': os.path.abspath(data_dir), 'temperature': 1.0,
            'n_params': model.num_params()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(ckpt, path)
    return path


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A dataset (val just big enough to fit a temperature), a cross-attention and a blind checkpoint, and the eval
    of both: the blind one with the defaults, the other with the blind gap and the temperature saved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this tiny run faster on one thread than on two fighting other jobs
    root = tmp_path_factory.mktemp('eval')
    data = make_dataset(str(root / 'data'), n=(48, ev.MIN_TEMPERATURE_QUESTIONS // 3, 24))
    ckpt = make_checkpoint(str(root / 'out-cross' / 'ckpt.pt'), data, n_patch_labels=len(prepare.PATCH_LABELS))
    blind = make_checkpoint(str(root / 'out-blind' / 'ckpt.pt'), data, fusion='none')
    blind_digest = digest(blind)
    blind_res = ev.evaluate(blind, robust_max=9, batch_questions=64)
    res = ev.evaluate(ckpt, blind_ckpt=blind, robust_max=30, batch_questions=64, save_temperature=True)
    yield {'root': root, 'data': data, 'ckpt': ckpt, 'blind': blind, 'res': res, 'blind_res': blind_res,
           'blind_untouched': digest(blind) == blind_digest}
    torch.set_num_threads(threads)


def test_end_to_end_writes_every_section_and_plot(run, capsys):
    out = os.path.dirname(run['ckpt'])
    saved = json.load(open(os.path.join(out, 'eval.json')))
    assert saved == run['res']
    for key in ('classification', 'calibration', 'grounding', 'baselines', 'robustness', 'errors'):
        assert saved[key], f"eval.json has no {key} section"
    assert saved['phrasing'] is None, "a dataset without phrasings skips the phrasing section"
    c = saved['classification']
    assert c['n'] == 72 and set(c['per_family']) == {'exist', 'count', 'spatial'} and 'yes_no' in c
    assert c['per_answer']['support'][ANSWERS.index('2')] == 0
    # per template too, beside the majority's: a family's mean cannot hide a template the model never learned
    per, major = c['per_template'], saved['baselines']['majority']['per_template']
    assert list(per) == list(major) == [q for _, q in QUESTIONS] and sum(x['n'] for x in per.values()) == c['n']
    for fam, q in QUESTIONS:  # one template a family here, so each template's figures are its family's
        assert per[q]['accuracy'] == pytest.approx(c['per_family'][fam]['accuracy'])
        assert major[q]['accuracy'] == pytest.approx(saved['baselines']['majority']['per_family'][fam]['accuracy'])
    g = saved['grounding']
    assert list(g['per_layer']) == ['cross-attn 0', 'cross-attn 1'] and set(g['per_family']) == {'exist', 'count', 'spatial'}
    assert g['n'] == sum(x['n'] for x in g['per_family'].values()) > 0
    # the patch head's AP per label: each toy car covers one patch cell, and toy box class 0 is PATCH_LABELS[0]
    det, test_boxes = saved['detection'], len(np.load(os.path.join(run['data'], 'test_boxes.npy')))
    assert list(det) == prepare.PATCH_LABELS and det[prepare.PATCH_LABELS[0]]['n'] == test_boxes > 0
    assert det[prepare.PATCH_LABELS[0]]['share'] == pytest.approx(test_boxes / (24 * 6))
    assert 0 < det[prepare.PATCH_LABELS[0]]['ap'] <= 1 and all(x['ap'] is None for x in list(det.values())[1:])
    assert run['blind_res']['detection'] is None                           # no image, no patch head
    assert saved['baselines']['blind']['gap'] == pytest.approx(c['accuracy'] - saved['baselines']['blind']['accuracy'])
    for f, x in saved['baselines']['majority']['per_family'].items():   # each family's margin over the majority
        assert x['gap'] == pytest.approx(c['per_family'][f]['accuracy'] - x['accuracy'])
        assert -100 <= x['gap_interval'][0] <= x['gap_interval'][1] <= 100   # in points, from resampled images
    ev.print_report(saved)   # the per-family table ends with an overall row, the blind model's accuracy last
    overall = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith('overall '))
    assert overall.split()[-1] == f"{saved['baselines']['blind']['accuracy']:.3f}"
    assert set(saved['robustness']['accuracy']) == set(ev.ROBUSTNESS) and saved['robustness']['n'] == 30
    assert 0 <= saved['robustness']['flip']['consistency'] <= 1 and saved['robustness']['flip']['n_left_right'] == 10
    for png in ('reliability.png', 'robustness.png', 'failures.png'):
        assert png in saved['plots'] and os.path.getsize(os.path.join(out, png)) > 1000
    # asked to, eval.py wrote the fitted temperature into the checkpoint, where answer() finds it
    cal = saved['calibration']
    assert cal['saved'] and cal['temperature_from'] == 'fitted on 300 val questions' and cal['temperature'] != 1.0
    assert TVLM.from_checkpoint(run['ckpt']).temperature == pytest.approx(cal['temperature'])
    # by default it only reports it: the blind checkpoint is byte for byte what training wrote
    assert not run['blind_res']['calibration']['saved'] and run['blind_untouched']
    assert run['blind_res']['grounding'] is None                          # a blind model has nothing to ground


@pytest.mark.parametrize('fusion, names', [('prefix', ['self-attn 0', 'self-attn 1']),
                                           ('both', ['cross-attn 0', 'cross-attn 1', 'self-attn 0', 'self-attn 1'])])
def test_grounding_reads_the_maps_viz_shows(run, fusion, names):
    """One map per tvlm.image_attention entry, each a distribution over the patches; their average for a question
    is viz.py's 'layer average' panel for it (under 'both': cross and prefix maps alike)."""
    ckpt = make_checkpoint(str(run['root'] / f'out-{fusion}' / 'ckpt.pt'), run['data'], steps=2, fusion=fusion)
    model, arrays = TVLM.from_checkpoint(ckpt), ev.open_split(run['data'], 'test')
    logits, maps, _ = ev.predict(model, arrays, 64, attn=True)
    assert logits.shape == (72, len(ANSWERS)) and list(maps) == names and all(m.shape == (72, 6) for m in maps.values())
    np.testing.assert_allclose(np.stack(list(maps.values())).sum(-1), 1.0, rtol=1e-5)
    for j in (0, 40, 71):
        r = viz.attend(model, np.asarray(arrays['images'][arrays['image_idx'][j]]), arrays['questions'][j].astype(np.int64))
        shown = np.mean([m[r['summary']] for _, m in r['layers']], axis=0).ravel()   # (P,)
        np.testing.assert_allclose(ev.layer_average(maps)[j], shown, rtol=1e-4, atol=1e-6)
    assert ev.predict(TVLM.from_checkpoint(run['blind']), arrays, 64, attn=True)[1] is None


def test_gallery_draws_in_viz_coordinates(run, monkeypatch):
    """failures.png goes through viz.overlay and viz.draw_boxes: heat on the image's own pixel grid, and a box edge
    at pixel x drawn at x - 0.5, where imshow puts that pixel's left edge."""
    figs = []
    monkeypatch.setattr(ev, 'save_fig', lambda fig, path: figs.append(fig))
    arrays, cfg = ev.open_split(run['data'], 'test'), TVLM.from_checkpoint(run['ckpt']).cfg
    j = int(np.flatnonzero(np.diff(arrays['ref_offsets']))[0])              # a question with one referent box
    case = {'question_idx': j, 'image': 'x', 'question': 'q?', 'truth': 'yes', 'prediction': 'no', 'confidence': 0.9}
    ev.plot_gallery([case], arrays, np.full((72, 6), 1 / 6), cfg, 'unused.png')
    ax = figs[0].axes[0]
    shown, heat = ax.images
    assert shown.get_extent() == heat.get_extent() == [-0.5, cfg.img_w - 0.5, cfg.img_h - 0.5, -0.5]
    (rect,) = ax.patches
    x1, y1 = arrays['boxes'][arrays['referents'][arrays['ref_offsets'][j]]][:2]
    assert rect.get_xy() == (x1 - 0.5, y1 - 0.5)


def test_compare_table(run, tmp_path):
    dirs = [os.path.dirname(run['ckpt']), os.path.dirname(run['blind'])]
    rows = ev.compare_runs(dirs, str(tmp_path / 'new'))                # --out: a folder not made yet
    assert [r['run'] for r in rows] == dirs and rows[0]['accuracy'] == run['res']['classification']['accuracy']
    assert rows[0]['grounding_ratio'] == run['res']['grounding']['ratio'] and rows[1]['grounding_ratio'] is None
    assert json.load(open(tmp_path / 'new' / 'ablation.json')) == json.loads(json.dumps(rows))
    with pytest.raises(SystemExit, match='run `python eval.py'):
        ev.compare_runs([str(tmp_path / 'nowhere')], str(tmp_path))
    for bad in ('{}', '[1]', '{"classification'):                      # another JSON, a truncated one
        (tmp_path / 'bad.json').write_text(bad)
        with pytest.raises(SystemExit, match='bad.json is not an eval.py report'):
            ev.compare_runs([str(tmp_path / 'bad.json')], str(tmp_path))
    with pytest.raises(SystemExit, match='bad.json cannot be made a folder'):
        ev.compare_runs(dirs, str(tmp_path / 'bad.json'))


def test_clear_errors(run, tmp_path):
    with pytest.raises(SystemExit, match='no checkpoint at'):
        ev.evaluate(str(tmp_path / 'missing.pt'))
    other = make_dataset(str(tmp_path / 'other'), n=(3, 3, 3), answers=['yes', 'no', 'none', 'one', 'two'])
    with pytest.raises(SystemExit, match='have different answer classes'):
        ev.evaluate(run['ckpt'], data_dir=other)
    with pytest.raises(SystemExit, match="has no split 'tset'"):
        ev.evaluate(run['ckpt'], split='tset')
    with pytest.raises(SystemExit, match='no checkpoint at'):          # before any work is done or written
        ev.evaluate(run['ckpt'], blind_ckpt=str(tmp_path / 'typo.pt'), out=str(tmp_path / 'blind'))
    assert not os.path.exists(tmp_path / 'blind')
    with pytest.raises(SystemExit, match='sees the image .*config/ablate_blind.py'):
        ev.evaluate(run['ckpt'], blind_ckpt=run['ckpt'], out=str(tmp_path / 'blind'))
    assert not os.path.exists(tmp_path / 'blind')
    moved = load_checkpoint(run['ckpt'])                                 # a checkpoint from another machine
    torch.save({**moved, 'data_dir': '/elsewhere/data/synthetic'}, tmp_path / 'moved.pt')
    with pytest.raises(SystemExit, match="trained on /elsewhere/data/synthetic, which is not here .*--data_dir="):
        ev.evaluate(str(tmp_path / 'moved.pt'))


class RunsCode:
    """Unpickling this calls exec: what a crafted 'checkpoint' from the internet could do."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_unsafe_or_truncated_checkpoints_stop_in_one_line(run, tmp_path):
    """A pickle that would run code and a half-copied checkpoint: exit code 1, one line on stderr, nothing run."""
    marker = tmp_path / 'code-ran'
    torch.save({'model': RunsCode(str(marker)), 'model_args': {}, 'tokenizer': {}, 'answers': []}, tmp_path / 'crafted.pt')
    with open(run['ckpt'], 'rb') as f:
        good = f.read()
    (tmp_path / 'truncated.pt').write_bytes(good[:len(good) // 2])                   # a copy cut short
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    procs = {name: subprocess.Popen([sys.executable, os.path.join(ROOT, 'eval.py'), f'--ckpt={tmp_path / name}.pt',
                                      f'--out={tmp_path}'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name in ('crafted', 'truncated')}
    for name, words in (('crafted', 'refusing to load'), ('truncated', 'is not a readable torch checkpoint')):
        stdout, stderr = procs[name].communicate(timeout=120)
        assert procs[name].returncode == 1, stderr
        assert words in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not marker.exists(), "loading the crafted checkpoint ran its code"
    assert not (tmp_path / 'eval.json').exists()


def test_a_dataset_with_only_test_questions(run, tmp_path, capsys):
    """BDD100K's val images alone prepare empty train and val splits: no temperature to fit, no train answers to
    count, yet every other section runs; an empty evaluated split stops in one line."""
    data = make_dataset(str(tmp_path / 'test-only'), n=(0, 0, 24))
    model = TVLM.from_checkpoint(run['ckpt'])
    assert ev.predict(model, ev.open_split(data, 'val'), 64, attn=True)[0].shape == (0, len(ANSWERS))
    ckpt, own = tmp_path / 'run' / 'ckpt.pt', tmp_path / 'run' / 'eval.json'   # a run with its own report
    os.makedirs(ckpt.parent)
    shutil.copy(run['ckpt'], ckpt)
    own.write_text('{"the": "report on its own data"}')
    res = ev.evaluate(str(ckpt), data_dir=data, robust_max=9, batch_questions=64)
    assert own.read_text() == '{"the": "report on its own data"}'       # another dataset's report goes beside it
    assert json.loads((tmp_path / 'run' / 'eval-test-only' / 'eval.json').read_text())['n_questions'] == 72
    ev.evaluate(str(ckpt), split='val', robust_max=9, batch_questions=64)            # and another split's
    assert own.read_text() == '{"the": "report on its own data"}' and (tmp_path / 'run' / 'eval-val' / 'eval.json').exists()
    assert res['calibration']['temperature'] == 1.0 and res['baselines']['majority']['counted_on'] == 'this split'
    for key in ('classification', 'grounding', 'robustness', 'errors'):
        assert res[key], f"no {key} section"
    ev.print_report(res)
    report = capsys.readouterr().out
    assert f"on {data} (toy), test split: 72 questions" in report
    assert 'val has 0 questions: too few to fit a temperature, T = 1' in report
    assert 'majority answer per template (counted on this split)' in report
    per, major = res['classification']['per_template'], res['baselines']['majority']['per_template']
    first = min((t for t in per if major[t]['accuracy'] < 1), key=lambda t: per[t]['accuracy'] - major[t]['accuracy'])
    assert f"the templates least above it: {first!r} {per[first]['accuracy']:.3f} vs " in report
    with pytest.raises(SystemExit, match=r'^the val split of .*test-only has no questions ---> HINT'):
        ev.evaluate(run['ckpt'], data_dir=data, split='val', out=str(tmp_path))
    before = digest(str(ckpt))                         # no temperature fitted: none is saved, the old one stays
    res = ev.evaluate(str(ckpt), data_dir=data, robust_max=9, batch_questions=64, save_temperature=True)
    assert digest(str(ckpt)) == before and res['calibration']['saved'] is False


def test_a_failed_evaluation_saves_no_temperature(run, tmp_path, monkeypatch):
    """--save_temperature writes the checkpoint last: an evaluation that fails on the way leaves it as it was."""
    ckpt = str(tmp_path / 'ckpt.pt')
    torch.save({**load_checkpoint(run['ckpt']), 'temperature': 3.0}, ckpt)
    monkeypatch.setattr(ev, 'error_section', lambda *args: 1 / 0)      # the last section before eval.json
    with pytest.raises(ZeroDivisionError):
        ev.evaluate(ckpt, data_dir=run['data'], out=str(tmp_path / 'o'), robust_max=9, batch_questions=64,
                    save_temperature=True)
    assert load_checkpoint(ckpt)['temperature'] == 3.0 and not os.path.exists(tmp_path / 'o' / 'eval.json')


def test_script_end_to_end(run, tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'eval.py'), f"--ckpt={run['ckpt']}", f'--out={tmp_path}',
           '--robust_max=9', '--batch_questions=64']
    before = digest(run['ckpt'])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert res.returncode == 0, res.stderr
    assert 'grounding' in res.stdout and 'per family' in res.stdout and (tmp_path / 'eval.json').exists()
    assert f"on {run['data']} (toy), test split" in res.stdout and 'this temperature is not saved' in res.stdout
    assert digest(run['ckpt']) == before, "eval.py changed the checkpoint without --save_temperature=True"
    bad = subprocess.run(cmd + ['--seed=-1'], capture_output=True, text=True, timeout=120)   # before any work
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["--seed=-1 must be 0 or more"]
