"""prepare.py: BDD100K fixtures in every label format round-trip, the question rules, bad input, atomicity,
determinism, and the readers. Fixtures are written into tmp_path; the synthetic world's tests are in test_world.py."""
import glob
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import torch
import pytest
from PIL import Image

import prepare
from conftest import ROOT
from prepare import ANSWERS, BOX_CLASSES, TEMPLATES
from tvlm import Tokenizer, mirror_tables

H, W = 144, 256   # stored size of the rule table below


def cfg(**kw):
    c = dict(bdd_root='', out='', max_images=0, weather='', timeofday='', img_h=36, img_w=64, max_q_len=16, max_answer_len=16,
             seed=1, workers=1, force=False, synth_train=6, synth_val=3, train_per_family=3)
    c.update(kw)
    return c


def write_jpeg(path, size=(640, 360), seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=85)


def load(out, split, name):
    return np.load(os.path.join(out, f'{split}_{name}.npy'), mmap_mode='r')

# -----------------------------------------------------------------------------
# fixtures in the official formats (../shared/BDD100K_FORMAT.md)

CAR = {'x1': 64.0, 'y1': 36.0, 'x2': 320.0, 'y2': 216.0}          # at 640x360 -> (6.4, 3.6, 32, 21.6) at 64x36
LIGHT = {'x1': 600.0, 'y1': 0.0, 'x2': 700.0, 'y2': 50.0}         # sticks out of the 640 wide frame: clipped


def frames_2018(names):
    return [{'name': n + '.jpg', 'attributes': {'weather': 'clear', 'scene': 'city street', 'timeofday': 'night'},
             'timestamp': 10000,
             'labels': None if i == 1 else [
                 {'category': 'car', 'id': 4, 'attributes': {'occluded': False, 'truncated': False, 'trafficLightColor': 'none'},
                  'manualShape': True, 'manualAttributes': True, 'box2d': CAR},
                 {'category': 'traffic light', 'id': 5, 'attributes': {'trafficLightColor': 'red'}, 'box2d': LIGHT},
                 {'category': 'motor', 'id': 6, 'attributes': {}, 'box2d': {'x1': 10, 'y1': 10, 'x2': 10, 'y2': 50}},
                 {'category': 'drivable area', 'id': 7, 'attributes': {'areaType': 'direct'},
                  'poly2d': [{'vertices': [[0, 300], [640, 300], [320, 200]], 'types': 'LLL', 'closed': True}]},
                 {'category': 'lane', 'id': 8, 'attributes': {'laneDirection': 'parallel', 'laneType': 'road curb'},
                  'poly2d': [{'vertices': [[100, 300], [200, 250]], 'types': 'LL', 'closed': False}]},
                 {'category': 'flying saucer', 'id': 9, 'box2d': CAR}]}
            for i, n in enumerate(names)]


def make_tree(root, fmt, train=('aaaa0001-00000001', 'aaaa0002-00000002', 'aaaa0003-00000003'), val=('bbbb0001-00000001',)):
    """A BDD100K tree in one label format; returns the names per BDD split."""
    for split, names in (('train', train), ('val', val)):
        for i, n in enumerate(names):
            write_jpeg(os.path.join(root, 'images', '100k', split, n + '.jpg'), seed=i)
        frames = frames_2018(names)
        lab = os.path.join(root, 'labels')
        if fmt == '2018':
            os.makedirs(lab, exist_ok=True)
            json.dump(frames, open(os.path.join(lab, f'bdd100k_labels_images_{split}.json'), 'w'))
        elif fmt == 'legacy':
            os.makedirs(os.path.join(lab, '100k', split), exist_ok=True)
            for fr in frames:
                objs = [dict(l, poly2d=[[v[0], v[1], 'L'] for v in l['poly2d'][0]['vertices']]) if 'poly2d' in l else l
                        for l in fr['labels'] or []]
                doc = {'name': fr['name'][:-4], 'attributes': fr['attributes'],
                       'frames': [{'timestamp': 10000, 'index': 0, 'objects': objs}]}
                json.dump(doc, open(os.path.join(lab, '100k', split, fr['name'][:-4] + '.json'), 'w'))
        else:  # det_20: 2020 names, string ids, R/G/NA, ignored classes, null poly2d/box3d, {"frames": [...]}
            os.makedirs(os.path.join(lab, 'det_20'), exist_ok=True)
            for fr in frames:
                fr['labels'] = None if fr['labels'] is None else [
                    {'id': str(k), 'category': c, 'attributes': {'occluded': False, 'trafficLightColor': col},
                     'box2d': b, 'poly2d': None, 'box3d': None}
                    for k, (c, col, b) in enumerate([('other vehicle', 'NA', CAR), ('traffic light', 'R', LIGHT),
                                                     ('motorcycle', 'NA', {'x1': 10, 'y1': 10, 'x2': 10, 'y2': 50}),
                                                     ('flying saucer', 'NA', CAR)])]
            json.dump({'frames': frames, 'config': {}}, open(os.path.join(lab, 'det_20', f'det_{split}.json'), 'w'))
    return train, val


@pytest.mark.parametrize('fmt', ['2018', 'legacy', 'det_20'])
def test_every_label_format_round_trips(tmp_path, fmt):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    train, val = make_tree(root, fmt)
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert meta['source_format'] == fmt and meta['img_h'] == 36 and meta['img_w'] == 64
    assert meta['rules']['edge'] == prepare.EDGE and meta['rules']['wide'] == ['car', 'truck', 'bus']   # every rule number
    names = {s: json.load(open(os.path.join(out, f'{s}_names.json'))) for s in ('train', 'val', 'test')}
    assert names['test'] == list(val) and sorted(names['train'] + names['val']) == sorted(train)
    images = load(out, 'test', 'images')
    assert images.shape == (1, 36, 64, 3) and images.dtype == np.uint8
    boxes, cls, off = load(out, 'test', 'boxes'), load(out, 'test', 'box_class'), load(out, 'test', 'box_offsets')
    # the car scaled by the decoded size (640x360 -> 64x36); the light clipped; the degenerate motorcycle and
    # the unknown category dropped; the polygons never become boxes
    np.testing.assert_allclose(boxes, [[6.4, 3.6, 32, 21.6], [60, 0, 64, 5]], atol=1e-4)
    assert [BOX_CLASSES[c] for c in cls] == ['car', 'traffic light'] and list(off) == [0, 2]
    assert meta['skipped']["unknown category 'flying saucer'"] == 3 and meta['skipped']['degenerate box'] == 3   # frame 1 has labels: null
    q, a, t = load(out, 'test', 'questions'), load(out, 'test', 'answers'), load(out, 'test', 'template')
    assert q.shape == (len(a), 16) and q.dtype == np.uint16 and (q[:, 0] == 2).all()
    asked = {meta['templates'][ti]: ANSWERS[ai] for ti, ai in zip(t, a)}
    assert asked.get('Is it night?', 'yes') == 'yes' and asked.get('Is there a car?', 'yes') == 'yes'
    qo, ro = load(out, 'train', 'q_offsets'), load(out, 'train', 'ref_offsets')
    assert qo[-1] == len(load(out, 'train', 'answers')) == len(ro) - 1
    assert (np.diff(load(out, 'train', 'image_idx')) >= 0).all(), "questions must be sorted by image"
    refs = load(out, 'train', 'referents')
    assert len(refs) == ro[-1] and (refs < len(load(out, 'train', 'boxes'))).all()

def test_a_tree_with_two_label_formats_reads_the_complete_one(tmp_path):
    """The 2018 labels for both splits beside a lone det_20 val file: the complete format is read, not the first."""
    root = str(tmp_path / 'bdd')
    make_tree(root, '2018')
    os.makedirs(os.path.join(root, 'labels', 'det_20'))
    json.dump([], open(os.path.join(root, 'labels', 'det_20', 'det_val.json'), 'w'))
    fmt, frames = prepare.find_labels(root)
    assert fmt == '2018' and len(frames['train']) == 3 and len(frames['val']) == 1


# -----------------------------------------------------------------------------
# the question rules, on hand-built scenes at 144x256 (horizon y=64.8, close y>=84.96, far y<79.2)

def obj(cls, x, y, h, w=None, colour='none'):
    """A box with footprint (x, y) and height h."""
    w = h if w is None else w
    return (x - w / 2, y - h, x + w / 2, y, BOX_CLASSES.index(cls), prepare.COLOURS.index(colour))


def lane_x(u, y):
    return W / 2 + u * prepare.SLOPE * (y - prepare.HORIZON * H)


def answers(objs, **attrs):
    b = np.asarray([o[:4] for o in objs], dtype=np.float32).reshape(-1, 4)
    cls = np.asarray([o[4] for o in objs], dtype=np.int16)
    col = np.asarray([o[5] for o in objs], dtype=np.int8)
    return {TEMPLATES[t][1]: a for t, a, _ in prepare.candidates(b, cls, col, attrs, H, W)}


CLOSE_Y = 110
SCENES = [  # (what, objects, attributes, {question: answer, or None when it must be skipped})
    ('empty road by day', [], {'timeofday': 'daytime', 'weather': 'clear'},
     {'Is there a pedestrian?': 'no', 'How many cars are close?': '0', 'Is the road ahead clear?': 'yes',
      'Is the left lane clear?': 'yes', 'Should I stop?': 'no', 'Is it safe to go straight?': 'yes',
      'Can I safely turn left?': 'yes', 'What color is the traffic light?': None, 'Is it night?': 'no',
      'Is it raining?': 'no'}),
    ('car ahead', [obj('car', lane_x(0, CLOSE_Y), CLOSE_Y, 40)], {},
     {'Is the road ahead clear?': 'no', 'Should I stop?': 'yes', 'Is it safe to go straight?': 'no',
      'Can I safely turn right?': 'yes', 'Is there a car?': 'yes', 'How many cars are close?': '1'}),
    ('car in the left lane', [obj('car', lane_x(-2, CLOSE_Y), CLOSE_Y, 40)], {},
     {'Is the left lane clear?': 'no', 'Is there a car on the left?': 'yes', 'Is the road ahead clear?': 'yes',
      'Can I safely turn left?': 'no', 'Is there a car on the right?': 'no', 'Is the right lane clear?': 'yes'}),
    ('pedestrian on the right sidewalk', [obj('pedestrian', lane_x(4, CLOSE_Y), CLOSE_Y, 40, 12)], {},
     {'Is the right lane clear?': 'yes', 'Can I safely turn right?': 'no', 'Is there a pedestrian?': 'yes',
      'How many pedestrians are close?': '1', 'Is there a car on the right?': 'no'}),
    ('car on the ego-lane edge', [obj('car', lane_x(-1, CLOSE_Y), CLOSE_Y, 40)], {},
     {'Is the road ahead clear?': None, 'Is the left lane clear?': None, 'Should I stop?': None,
      'Is the right lane clear?': 'yes', 'How many cars are close?': '1'}),
    ('car between far and close', [obj('car', W / 2, 82, 20)], {},
     {'How many cars are close?': None, 'Is the road ahead clear?': None, 'Is there a car?': 'yes'}),
    ('far car ahead does not block', [obj('car', W / 2, 72, 12)], {},
     {'Is the road ahead clear?': 'yes', 'How many cars are close?': '0', 'Is there a car?': 'yes'}),
    ('seven close cars', [obj('car', lane_x(u, CLOSE_Y), CLOSE_Y, 30, 8) for u in (-2.1, -1.6, -0.5, 0, 0.5, 1.6, 2.1)], {},
     {'How many cars are close?': 'more than 5'}),
    ('tiny, unsure and visible pedestrians', [obj('pedestrian', 20, 70, 4)], {}, {'Is there a pedestrian?': 'no'}),
    ('unsure pedestrian', [obj('pedestrian', 20, 70, 8)], {}, {'Is there a pedestrian?': None}),
    ('red light', [obj('traffic light', 128, 40, 12, 5, 'red')], {},
     {'What color is the traffic light?': 'red', 'Is the light red?': 'yes', 'Is the light green?': 'no',
      'Should I stop?': 'yes', 'Is it safe to go straight?': 'no', 'Can I safely turn left?': 'no'}),
    ('green light, clear road', [obj('traffic light', 128, 40, 12, 5, 'green')], {},
     {'What color is the traffic light?': 'green', 'Is the light red?': 'no', 'Should I stop?': 'no',
      'Is it safe to go straight?': 'yes', 'Can I safely turn right?': 'yes'}),
    ('yellow light, clear road', [obj('traffic light', 128, 40, 12, 5, 'yellow')], {},
     {'What color is the traffic light?': 'yellow', 'Should I stop?': None, 'Is it safe to go straight?': 'no'}),
    ('yellow light, car ahead', [obj('traffic light', 128, 40, 12, 5, 'yellow'), obj('car', W / 2, CLOSE_Y, 40)], {},
     {'Should I stop?': 'yes', 'Is it safe to go straight?': 'no'}),
    ('lights disagree', [obj('traffic light', 100, 40, 12, 5, 'red'), obj('traffic light', 150, 40, 12, 5, 'green')], {},
     {'What color is the traffic light?': None, 'Is the light red?': None, 'Should I stop?': None}),
    ('a tiny light of another colour is ignored', [obj('traffic light', 100, 40, 12, 5, 'red'),
                                                   obj('traffic light', 150, 40, 3, 1, 'green')], {},
     {'What color is the traffic light?': 'red'}),
    ('only a small light', [obj('traffic light', 100, 40, 6, 2, 'green')], {},
     {'What color is the traffic light?': None, 'Is it safe to go straight?': None}),
    ('unlit light is no light', [obj('traffic light', 100, 40, 12, 5, 'none')], {},
     {'What color is the traffic light?': None, 'Is it safe to go straight?': 'yes'}),
    ('night, rain', [], {'timeofday': 'night', 'weather': 'rainy'}, {'Is it night?': 'yes', 'Is it raining?': 'yes'}),
    ('dusk, snow', [], {'timeofday': 'dawn/dusk', 'weather': 'snowy'}, {'Is it night?': None, 'Is it raining?': None}),
    ('fog is not rain', [], {'weather': 'foggy'}, {'Is it raining?': 'no'}),
    ('cyclist and truck', [obj('rider', 200, 100, 30, 10), obj('truck', 60, 75, 30)], {},
     {'Is there a cyclist?': 'yes', 'Are there any trucks?': 'yes', 'Is there a bus?': 'no'}),
    # a vehicle cut by the frame's side is as visible as its strip is wide (here 8 px: unsure; 4: tiny; 20: visible)
    ('a strip of a car at the left edge', [obj('car', 4, CLOSE_Y, 40, 8)], {},
     {'Is there a car?': None, 'How many cars are close?': None, 'Is the left lane clear?': None}),
    ('a sliver of a car at the right edge', [obj('car', W - 2, CLOSE_Y, 40, 4)], {},
     {'Is there a car?': 'no', 'How many cars are close?': '0', 'Is the right lane clear?': 'yes'}),
    ('a wide strip of a car at the edge', [obj('car', 10, CLOSE_Y, 40, 20)], {},
     {'Is there a car?': 'yes', 'How many cars are close?': '1'}),
    ('a narrow car clear of the edge', [obj('car', 30, CLOSE_Y, 40, 8)], {}, {'How many cars are close?': '1'}),
    ('a pedestrian at the edge, by its height', [obj('pedestrian', 4, CLOSE_Y, 40, 8)], {},
     {'Is there a pedestrian?': 'yes', 'How many pedestrians are close?': '1'}),
]


@pytest.mark.parametrize('what, objs, attrs, expected', SCENES, ids=[s[0] for s in SCENES])
def test_question_rules(what, objs, attrs, expected):
    got = answers(objs, **attrs)
    for q, a in expected.items():
        assert got.get(q) == a, f"{what}: {q!r} -> {got.get(q)!r}, expected {a!r}"


def test_referents_are_the_deciding_boxes():
    objs = [obj('car', lane_x(0, CLOSE_Y), CLOSE_Y, 40), obj('pedestrian', 20, 70, 4), obj('traffic light', 128, 40, 12, 5, 'red')]
    b = np.asarray([o[:4] for o in objs], dtype=np.float32)
    cands = prepare.candidates(b, np.asarray([o[4] for o in objs]), np.asarray([o[5] for o in objs]), {}, H, W)
    refs = {TEMPLATES[t][1]: list(r) for t, _, r in cands}
    assert refs['Is the road ahead clear?'] == [0] and refs['What color is the traffic light?'] == [2]
    assert refs['Is it night?'] == [] if 'Is it night?' in refs else True


def test_a_yellow_light_and_a_blocked_road_stop_for_the_road():
    """Yellow alone does not decide "Should I stop?" (it is skipped on a clear road), so with the road ahead blocked
    the car decides it: the referent, the look target and the reason are the car's, not the light's."""
    objs = [obj('traffic light', 128, 40, 12, 5, 'yellow'), obj('car', W / 2, CLOSE_Y, 40)]
    b, cls, colour = np.asarray([o[:4] for o in objs], np.float32), np.asarray([o[4] for o in objs]), np.asarray([o[5] for o in objs])
    found = {TEMPLATES[t][1]: (a, list(r)) for t, a, r in prepare.candidates(b, cls, colour, {}, H, W)}
    assert found['Should I stop?'] == ('yes', [1]) and found['Is it safe to go straight?'] == ('no', [0])
    assert prepare.reason('Should I stop?', 'yes', np.asarray([1]), b, cls, colour, {}, H, W, 0) == \
        prepare.reason('Is the road ahead clear?', 'no', np.asarray([1]), b, cls, colour, {}, H, W, 0)


def test_light_colours_in_every_written_form_and_only_on_lights():
    """The 2018 layout's 'red', det_20's 'R', the toolkit's test files' [1, "G"]; a car's colour is not a light's."""
    box = {'x1': 0, 'y1': 0, 'x2': 10, 'y2': 30}
    labels = [{'category': 'traffic light', 'box2d': box, 'attributes': {'trafficLightColor': c}}
              for c in ('red', 'R', [1, 'G'], [0, 'NA'], 'none')]
    labels.append({'category': 'car', 'box2d': box, 'attributes': {'trafficLightColor': 'G'}})
    _, _, boxes = prepare.parse_frame({'name': 'a.jpg', 'labels': labels}, 'labels.json', {})
    assert [prepare.COLOURS[b[5]] for b in boxes] == ['red', 'red', 'green', 'none', 'none', 'none']


def test_balancing_keeps_answers_even_within_a_template():
    rng, counts = np.random.default_rng(0), np.zeros((len(TEMPLATES), len(ANSWERS)), dtype=np.int64)
    t = [q for _, q in TEMPLATES].index('Is there a car?')
    for i in range(400):   # "yes" is 9x more common than "no" in the images
        prepare.choose_questions([(t, 'yes' if i % 10 else 'no', np.zeros(0))], counts, rng)
    yes, no = counts[t, ANSWERS.index('yes')], counts[t, ANSWERS.index('no')]
    assert no == 40 and yes <= no + 2 * prepare.SLACK + 1


def test_per_family_asks_different_templates_of_a_family():
    names = [q for _, q in TEMPLATES]
    exist = [names.index(q) for q in ('Is there a car?', 'Is there a bus?', 'Is there a pedestrian?')]
    cands = [(t, 'yes', np.zeros(0)) for t in exist] + [(names.index('Is it night?'), 'no', np.zeros(0))]
    for per_family, n_exist in [(1, 1), (2, 2), (3, 3), (5, 3)]:   # never more than the family's candidates
        counts = np.zeros((len(TEMPLATES), len(ANSWERS)), dtype=np.int64)
        picked = [t for t, _, _ in prepare.choose_questions(cands, counts, np.random.default_rng(0), per_family)]
        assert len(set(picked)) == len(picked) and set(picked) <= {t for t, _, _ in cands}
        assert sum(t in exist for t in picked) == n_exist and names.index('Is it night?') in picked
        assert counts.sum() == len(picked)


# -----------------------------------------------------------------------------
# bad input, atomic output, reuse, determinism


def test_corrupt_and_missing_images_are_skipped_and_counted(tmp_path):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    train, _ = make_tree(root, '2018')
    d = os.path.join(root, 'images', '100k', 'train')
    os.remove(os.path.join(d, train[0] + '.jpg'))
    data = open(os.path.join(d, train[1] + '.jpg'), 'rb').read()
    open(os.path.join(d, train[1] + '.jpg'), 'wb').write(data[:len(data) // 3])   # truncated JPEG
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert meta['skipped']['missing image'] == 1 and meta['skipped']['corrupt image'] == 1
    kept = json.load(open(os.path.join(out, 'train_names.json'))) + json.load(open(os.path.join(out, 'val_names.json')))
    assert kept == [train[2]]
    n = meta['counts']['train']['images']
    assert load(out, 'train', 'images').shape[0] == n == len(load(out, 'train', 'box_offsets')) - 1


@pytest.mark.parametrize('text, what', [('[{"name": "x.jpg", "labels": [', 'malformed JSON at line 1'),
                                        ('{"name": 3}', 'expected a list of frames'),
                                        ('[{"name": "x.jpg", "labels": [{"category": "car", "box2d": {"x1": 1}}]}]',
                                         'box2d needs numbers'),
                                        ('[{"name": "x.jpg", "labels": [{"category": "traffic light", "attributes": '
                                         '["occluded"], "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 9}}]}]',
                                         "a label's 'attributes' must be a dict")])
def test_malformed_labels_give_one_clear_line(tmp_path, text, what):
    lab = tmp_path / 'bdd' / 'labels'
    lab.mkdir(parents=True)
    (lab / 'bdd100k_labels_images_train.json').write_text(text)
    with pytest.raises(prepare.LabelError, match=what) as e:
        prepare.load_frames(str(tmp_path / 'bdd'), cfg(), {})
    assert 'bdd100k_labels_images_train.json' in str(e.value)


def test_malformed_labels_exit_without_traceback(tmp_path):
    lab = tmp_path / 'bdd' / 'labels' / 'det_20'
    lab.mkdir(parents=True)
    (lab / 'det_train.json').write_text('[{oops')
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'prepare.py'), f'--bdd_root={tmp_path / "bdd"}',
                        f'--out={tmp_path / "out"}'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.strip().count('\n') == 0 and 'det_train.json: malformed JSON' in r.stderr


@pytest.mark.parametrize('bad, message', [
    (dict(max_q_len=3), "--max_q_len=3 cannot hold the longest question"),
    (dict(img_h=35), "--img_h=35 --img_w=64: sizes must be positive and even"),
    (dict(img_w=0), "--img_h=36 --img_w=0: sizes must be positive and even"),
    (dict(seed=-1), "--seed=-1 must be >= 0"),
    (dict(train_per_family=0), "--train_per_family, --workers, --synth_train and --synth_val must be >= 1"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, bad, message):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    with pytest.raises(SystemExit, match=re.escape(message)):
        prepare.run(cfg(bdd_root=root, out=out, **bad))
    assert not os.path.exists(out)


def test_a_max_answer_len_too_short_for_the_reasons_is_a_clear_error(tmp_path):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    with pytest.raises(prepare.LabelError, match=r"take \d+ tokens, --max_answer_len=4 ---> HINT"):
        prepare.build(cfg(out=out, max_answer_len=4), root, 'bdd100k', 'bdd100k')
    assert not os.path.exists(out)


def test_out_that_is_not_a_dataset_is_never_replaced(tmp_path):
    """--out naming a folder of other things (the BDD tree itself, a folder of one's own) stops before any work and
    deletes nothing; an empty folder, or one written with a trailing slash, is fine."""
    root = str(tmp_path / 'bdd')
    make_tree(root, '2018')
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'keep.txt').write_text('mine')
    for out in (root, str(mine)):
        with pytest.raises(SystemExit, match="exists and is not a prepared dataset"):
            prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    assert (mine / 'keep.txt').read_text() == 'mine' and os.path.isdir(os.path.join(root, 'images', '100k', 'train'))
    (tmp_path / 'empty').mkdir()
    for out in (str(tmp_path / 'empty'), str(tmp_path / 'slash') + '/'):
        final = prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
        assert final == os.path.normpath(out) and os.path.isfile(os.path.join(final, 'meta.json'))


def test_interrupted_write_leaves_no_dataset(tmp_path, monkeypatch):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')

    def boom(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare, 'summarize', boom)
    with pytest.raises(KeyboardInterrupt):
        prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    assert not os.path.exists(out) and glob.glob(out + '*') == []


def test_folders_left_by_killed_runs_are_removed(tmp_path):
    """A killed run leaves <out>.tmp-<pid>, a crash between replace_dir's two renames <out>.old-<pid>: the next
    build removes both."""
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    for left in (out + '.tmp-99999', out + '.old-99999'):
        os.makedirs(os.path.join(left, 'images'))
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    assert glob.glob(out + '.*') == [] and os.path.exists(os.path.join(out, 'meta.json'))


def test_rerun_reuses_unless_forced(tmp_path, capsys):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    stamp = os.stat(os.path.join(out, 'meta.json')).st_mtime_ns
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    assert 'reusing' in capsys.readouterr().out and os.stat(os.path.join(out, 'meta.json')).st_mtime_ns == stamp
    prepare.build(cfg(out=out, force=True), root, 'bdd100k', 'bdd100k')
    assert 'reusing' not in capsys.readouterr().out
    meta = json.load(open(os.path.join(out, 'meta.json')))
    with open(os.path.join(out, 'meta.json'), 'w') as f:                    # written by an older prepare.py
        json.dump({**meta, 'format_version': prepare.FORMAT_VERSION - 1}, f)
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    said = capsys.readouterr().out
    assert 'reusing' not in said and f'note: the dataset in {out} is replaced when this one is complete' in said
    assert json.load(open(os.path.join(out, 'meta.json')))['format_version'] == prepare.FORMAT_VERSION


def test_a_damaged_dataset_is_named_and_rebuilt(tmp_path, capsys):
    """A meta.json or array cut short stops the readers in one line that says how to rebuild; prepare.py, even
    without --force, rebuilds a dataset whose meta.json it cannot read."""
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    answers = os.path.join(out, 'val_answers.npy')
    with open(answers, 'r+b') as f:
        f.truncate(os.path.getsize(answers) - 1)
    with pytest.raises(SystemExit, match=f"{out} is damaged: .*---> HINT: re-run prepare.py with --force=True"):
        prepare.open_split(out, 'val')
    os.remove(os.path.join(out, 'test_names.json'))
    with pytest.raises(SystemExit, match=f"{out} is damaged: .*test_names.json"):
        prepare.open_split(out, 'test')
    with open(os.path.join(out, 'meta.json'), 'r+') as f:
        f.truncate(100)
    with pytest.raises(SystemExit, match="meta.json: malformed JSON .*---> HINT: re-run prepare.py with --force=True"):
        prepare.load_meta(out)
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    assert 'reusing' not in capsys.readouterr().out and prepare.load_meta(out)['format_version'] == prepare.FORMAT_VERSION
    prepare.open_split(out, 'val')                                       # whole again: no exit
    assert len(prepare.open_split(out, 'test')['answers']) > 0


def test_readers_name_what_they_were_given_instead_of_a_dataset(tmp_path):
    """A BDD tree passed where a prepared dataset goes, and a dataset of another image size than the model's, each
    end in one line that says which and what to do."""
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    with pytest.raises(SystemExit, match=re.escape(f"{root} is a BDD100K tree, not a prepared dataset ---> HINT: "
                                                   f"`python prepare.py --bdd_root={root} --out=<a new folder>`")):
        prepare.load_meta(root)
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    meta = prepare.load_meta(out)
    model = SimpleNamespace(tokenizer=Tokenizer.from_dict(meta['tokenizer']), answers=meta['answers'],
                            cfg=SimpleNamespace(img_h=72, img_w=128))
    with pytest.raises(SystemExit, match=r"have different image size \(72x128 against 36x64\) ---> HINT"):
        prepare.check_compatible(model, meta, out)


def test_filters_and_cap(tmp_path):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    # every fixture frame is night: a filter that keeps none ends in one line that says so and what it takes
    with pytest.raises(prepare.LabelError, match="no usable frame .*'filtered out': 4.*--timeofday one of daytime"):
        prepare.build(cfg(out=out, timeofday='daytime'), root, 'bdd100k', 'bdd100k')
    assert not os.path.exists(out)
    _, splits = prepare.load_frames(root, cfg(max_images=2), {})
    assert len(splits['train']) + len(splits['val']) == 2 and len(splits['test']) == 1


def test_same_seed_gives_byte_identical_output(tmp_path, monkeypatch):
    dirs = []
    for run, workers in enumerate((1, 2)):               # and the worker count does not matter
        monkeypatch.setattr(prepare, '__file__', str(tmp_path / f'run{run}' / 'prepare.py'))
        dirs.append(prepare.run(cfg(workers=workers, seed=7)))
    files = sorted(os.listdir(dirs[0]))
    assert files == sorted(os.listdir(dirs[1])) and 'train_images.npy' in files
    for f in files:
        assert open(os.path.join(dirs[0], f), 'rb').read() == open(os.path.join(dirs[1], f), 'rb').read(), f


def test_box_stats_describe_a_split_in_fractions_of_its_height():
    """Per class: boxes per frame, share of frames with one, height and bottom-y percentiles over H."""
    car, sign = BOX_CLASSES.index('car'), BOX_CLASSES.index('traffic sign')
    a = {'boxes': np.array([[0, 10, 5, 20], [0, 30, 5, 50], [0, 0, 1, 4], [0, 60, 5, 100]], np.float32),
         'box_class': np.array([car, car, sign, car], np.int16), 'box_offsets': np.array([0, 3, 3, 4, 4])}   # 4 frames
    s = prepare.box_stats(a, H=100)
    assert s['boxes_per_frame'] == 1.0 and s['car']['per_frame'] == 0.75 and s['car']['frames'] == 0.5
    np.testing.assert_allclose(s['car']['height'], np.percentile([0.1, 0.2, 0.4], [10, 50, 90]), atol=1e-3)
    np.testing.assert_allclose(s['car']['bottom'], np.percentile([0.2, 0.5, 1.0], [10, 50, 90]), atol=1e-3)
    assert s['traffic sign']['frames'] == 0.25 and s['bus'] == {'per_frame': 0.0, 'frames': 0.0, 'height': None, 'bottom': None}


def test_bdd_comparison_prints_each_statistic_beside_the_real_figure():
    """One line for boxes per frame, one per class, one per attribute; BDD's px of 720 become fractions of H."""
    car = BOX_CLASSES.index('car')
    a = {'boxes': np.array([[0, 10, 5, 20]], np.float32), 'box_class': np.array([car], np.int16),
         'box_offsets': np.array([0, 1, 1])}
    mix = {'scene': {'highway': 2}, 'timeofday': {'night': 1, 'dawn/dusk': 1}, 'weather': {'snowy': 1, 'foggy': 1}}
    lines = prepare.bdd_comparison(prepare.box_stats(a, H=100), mix)
    assert len(lines) == 1 + len(prepare.BDD_BOXES) + len(prepare.BDD_MIX)
    car_line = next(l for l in lines if l.startswith('car '))
    assert 'per frame  0.5 (BDD 9.4)' in car_line and 'in 50% of frames (BDD 99%)' in car_line
    assert 'height p10/p50/p90 0.10/0.10/0.10 H (BDD 0.02/0.05/0.20)' in car_line   # 14/35/144 px of 720
    assert 'highway 100% (BDD 21%)' in lines[-3] and 'night 50% (BDD 23%)' in lines[-2]
    assert 'foggy 50% (BDD <1%)' in lines[-1]


def test_meta_counts_frame_attributes_per_split(tmp_path):
    root, out = str(tmp_path / 'bdd'), str(tmp_path / 'out')
    make_tree(root, '2018')
    prepare.build(cfg(out=out), root, 'bdd100k', 'bdd100k')
    meta = json.load(open(os.path.join(out, 'meta.json')))
    assert meta['attributes']['test'] == {'scene': {'city street': 1}, 'timeofday': {'night': 1}, 'weather': {'clear': 1}}
    assert meta['box_stats']['test']['car']['per_frame'] == 1.0
    assert np.load(os.path.join(out, 'test_rain.npy')).tolist() == [0]        # clear: not raining, known


def test_sample_batch_keeps_questions_with_their_images(toy_data):
    """Every sampled question sits under the image it was asked about, and padding-only columns are cut."""
    arrays = prepare.open_split(toy_data, 'train')
    images, q, a, idx, rows, q_rows = prepare.sample_batch(arrays, 8, 3, torch.Generator().manual_seed(0))
    assert images.shape == (8, 32, 48, 3) and q.shape[0] == a.shape[0] == idx.shape[0] == 24
    assert (images == np.asarray(arrays['images'])[rows]).all()
    assert (np.asarray(arrays['answers'])[q_rows] == a).all() and (arrays['image_idx'][q_rows] == rows[idx]).all()
    assert q.dtype == a.dtype == np.int64 and (q[:, -1] != 0).any()
    file_images = np.asarray(arrays['images'])
    for j in range(24):  # find question j's row by its image and text, and check the answer stored there
        img = np.flatnonzero((file_images == images[idx[j]]).all(axis=(1, 2, 3)))[0]
        lo, hi = arrays['q_offsets'][img], arrays['q_offsets'][img + 1]
        rows = [r for r in range(lo, hi) if (arrays['questions'][r][:q.shape[1]] == q[j]).all()]
        assert rows and arrays['answers'][rows[0]] == a[j]


def test_sample_batch_asks_each_question_once_before_any_twice(toy_data):
    """An image's share of a batch holds every one of its questions before any repeats: a count differs by <= 1."""
    arrays = prepare.open_split(toy_data, 'train')
    counts = np.diff(arrays['q_offsets'])
    for k in (2, 7):
        _, _, _, _, rows, q_rows = prepare.sample_batch(arrays, 6, k, torch.Generator().manual_seed(k))
        for i, image in enumerate(rows):
            asked = np.bincount(q_rows[i * k:(i + 1) * k] - arrays['q_offsets'][image], minlength=counts[image])
            assert len(asked) == counts[image] and asked.max() - asked.min() <= 1 and asked.sum() == k


def test_split_batches_cover_every_question_once_in_order(toy_data):
    arrays = prepare.open_split(toy_data, 'val')
    seen = []
    for rows, q_rows, images, q, idx in prepare.split_batches(arrays, max_questions=10):
        q_lo, q_hi = q_rows.start, q_rows.stop
        assert q_hi - q_lo <= 10 and len(q) == len(idx) == q_hi - q_lo
        assert (images[idx] == np.asarray(arrays['images'])[arrays['image_idx'][q_lo:q_hi]]).all()
        assert (np.asarray(arrays['images'])[rows] == images).all()
        seen.extend(range(q_lo, q_hi))
    assert seen == list(range(len(arrays['answers'])))


def test_patch_labels_mark_the_patches_each_box_touches():
    """A box marks its class in every patch it overlaps (even a sliver); a lit light also marks its colour; rain
    is the frame's, on every patch: 1 raining, 0 not, -1 not known."""
    car, light = prepare.BOX_CLASSES.index('car'), prepare.BOX_CLASSES.index('traffic light')
    arrays = {'images': np.zeros((2, 32, 48, 3), np.uint8), 'box_offsets': np.array([0, 2, 2]),
              'boxes': np.array([[9, 1, 24, 15], [40, 17, 41, 20]], np.float32),            # x1, y1, x2, y2
              'box_class': np.array([car, light], np.int16),
              'box_colour': np.array([0, prepare.COLOURS.index('red')], np.int8), 'rain': np.array([0, -1], np.int8)}
    labels = prepare.patch_labels(arrays, np.array([0, 1]), patch=8)
    assert labels.shape == (2, 4, 6, len(prepare.PATCH_LABELS)) and labels.dtype == np.float32
    expected_car = np.zeros((4, 6))
    expected_car[0:2, 1:3] = 1                        # x 9..24 -> columns 1, 2; y 1..15 -> rows 0, 1
    assert (labels[0, ..., car] == expected_car).all()
    lit = np.zeros((4, 6))
    lit[2, 5] = 1                                     # a 1x3-pixel light still marks its one patch
    assert (labels[0, ..., light] == lit).all()
    assert (labels[0, ..., prepare.PATCH_LABELS.index('red light')] == lit).all()
    rain = prepare.PATCH_LABELS.index('rain')
    assert (labels[0, ..., rain] == 0).all() and (labels[1, ..., rain] == -1).all()
    assert labels[0].sum() == expected_car.sum() + 2 and (np.delete(labels[1], rain, -1) == 0).all()  # image 1: no boxes
    arrays['rain'] = np.array([1, 0], np.int8)
    assert (prepare.patch_labels(arrays, np.array([1, 0]), patch=8)[..., rain] == [[[0]], [[1]]]).all()   # by row


def test_look_targets_spread_over_the_referents_patches():
    """A question's look target is the patches its referent boxes touch, weighted alike and summing to 1 (the
    union: a patch two referents share counts once); a question without referents gets all zeros, unless it asks
    about the whole frame (the scene family: the weather, the time of day), which looks at every patch alike."""
    exist, scene = prepare.FAMILIES.index('exist'), prepare.FAMILIES.index('scene')
    arrays = {'images': np.zeros((1, 32, 48, 3), np.uint8),
              'boxes': np.array([[9, 1, 24, 15], [20, 2, 22, 4], [40, 17, 41, 20]], np.float32),   # x1, y1, x2, y2
              'referents': np.array([0, 1, 2, 2]), 'ref_offsets': np.array([0, 3, 3, 4, 4]),    # questions 0..3
              'family': np.array([exist, exist, exist, scene])}
    looks = prepare.look_targets(arrays, np.array([0, 1, 2, 3]), patch=8)
    assert looks.shape == (4, 4, 6) and looks.dtype == np.float32
    where = np.zeros((4, 6))
    where[0:2, 1:3] = 1                               # box 0; box 1 lies inside its patches
    where[2, 5] = 1                                   # box 2, a sliver
    np.testing.assert_allclose(looks[0], where / 5)
    assert (looks[1] == 0).all()                      # no referents: nothing to look at
    assert looks[2, 2, 5] == 1 and looks[2].sum() == 1
    np.testing.assert_allclose(looks[3], np.full((4, 6), 1 / 24))   # "Is it raining?": everywhere alike


def test_training_batch_mirrors_look_targets_with_their_questions(toy_data):
    """With flips, a mirrored image's questions swap left and right and its look targets mirror too: every toy
    question about the left (right) half looks at the left (right) half, flipped or not."""
    from tvlm import TVLMConfig, Tokenizer
    arrays, meta = prepare.open_split(toy_data, 'train'), prepare.load_meta(toy_data)
    tok = Tokenizer.from_dict(meta['tokenizer'])
    cfg = TVLMConfig(img_h=32, img_w=48, patch=8, vocab_size=len(tok), max_q_len=8, n_answers=2, look_weight=1.0)
    said = []
    for flip in (None, mirror_tables(tok, meta['answers'])):
        _, q, _, k, _, looks = prepare.training_batch(arrays, cfg, 16, 4, torch.Generator().manual_seed(0), 'cpu', flip)
        assert k == 4 and looks.shape == (64, 4, 6)
        left = looks[:, :, :3].sum((1, 2))                                        # (B,) weight on the left half
        said.append([tok.decode(row.tolist()) for row in q])
        for words, on_left in zip(said[-1], left.tolist()):
            side = next(s for s in ('left', 'right', 'both') if s in words.split())
            assert on_left == pytest.approx({'left': 1.0, 'right': 0.0, 'both': 0.5}[side]), words
    assert said[0] != said[1]                                                     # the same draw, some mirrored


@pytest.mark.parametrize('answer', ['classify', 'generate'])
def test_word_dropout_hides_question_words_only(toy_data, answer):
    """word_dropout turns about that share of the question's words into <unk>, and nothing else: not <bos>, <eos>
    or padding, not the answer words that follow the question in generate mode, not the answers or the images."""
    from tvlm import TVLMConfig, Tokenizer
    arrays, meta = prepare.open_split(toy_data, 'train'), prepare.load_meta(toy_data)
    cfg = TVLMConfig(img_h=32, img_w=48, patch=8, vocab_size=len(meta['tokenizer']['itos']), max_q_len=8,
                     n_answers=2, answer=answer, max_answer_len=8)
    batches = [prepare.training_batch(arrays, cfg, 64, 4, torch.Generator().manual_seed(0), 'cpu', word_dropout=p)
               for p in (0.0, 0.3)]
    (images, q, targets), (images_d, q_d, targets_d) = batches[0][:3], batches[1][:3]
    assert torch.equal(images, images_d)
    changed = q != q_d                                                            # (B, T)
    question = torch.cumsum(q == Tokenizer.eos_id, 1) == 0                        # (B, T) before the first <eos>
    words = question & (q > Tokenizer.eos_id)
    assert (q_d[changed] == Tokenizer.unk_id).all() and not (changed & ~words).any()
    assert changed.sum() / words.sum() == pytest.approx(0.3, abs=0.05)
    if answer == 'classify':
        assert torch.equal(targets, targets_d)
    else:  # the targets from the question's <eos> on are the answer's words, as they were
        assert torch.equal(targets[~question], targets_d[~question])

# -----------------------------------------------------------------------------
# questions as people ask them: phrasings, held-out wordings, out-of-scope questions


def test_phrasings_are_many_and_each_fits_its_template():
    per_template = [len(prepare.PHRASINGS[q]) for _, q in TEMPLATES]
    assert set(prepare.PHRASINGS) == {q for _, q in TEMPLATES}, "every phrasing list belongs to a template"
    assert sum(per_template) >= 100 and sum(per_template) / len(TEMPLATES) >= 5, per_template
    assert all(prepare.PHRASINGS[q][0] == q for _, q in TEMPLATES), "each template is its own first phrasing"
    assert all(0 <= t < len(TEMPLATES) for t, _, _, _ in prepare.PHRASES)
    assert max(len(Tokenizer.split(p)) for _, p, _, _ in prepare.PHRASES) + 2 <= cfg()['max_q_len']
    for t in range(len(TEMPLATES)):  # every template keeps seen phrasings to train on and held-out ones to test
        held = [h for t2, _, h, new in prepare.PHRASES if t2 == t and not new]
        assert 0 < sum(held) < len(held) and sum(held) == len(held) // 5, (TEMPLATES[t], held)
    assert len({p.lower() for _, p, _, _ in prepare.PHRASES}) == len(prepare.PHRASES), "a phrasing of two templates"


def test_held_out_phrasings_recombine_seen_words():
    """Held-out phrasings test new wordings, not new words: each of their words occurs in some seen phrasing."""
    seen = {w for _, p, held, _ in prepare.PHRASES if not held for w in Tokenizer.split(p)}
    for _, p, held, new in prepare.PHRASES:
        if held and not new:
            assert set(Tokenizer.split(p)) <= seen, f"{p!r}: {set(Tokenizer.split(p)) - seen} never seen in training"


def test_cant_answer_is_an_answer_of_its_own_first_word():
    assert prepare.CANT in ANSWERS and len({a.split()[0] for a in ANSWERS}) == len(ANSWERS)
    assert prepare.reason(TEMPLATES[prepare.OUT_OF_SCOPE][1], prepare.CANT, [], None, None, None, {}, H, W, 0) == \
        'the question is not about the road'


@pytest.fixture(scope='module')
def phrased(tmp_path_factory):
    """A BDD tree big enough for out-of-scope questions on some images of every split, prepared."""
    root, out = tmp_path_factory.mktemp('phrased'), None
    make_tree(str(root / 'bdd'), '2018', train=[f'aaaa{i:04d}-{i:08d}' for i in range(40)],
              val=[f'bbbb{i:04d}-{i:08d}' for i in range(12)])
    out = str(root / 'out')
    prepare.build(cfg(out=out), str(root / 'bdd'), 'bdd100k', 'bdd100k')
    return out


def test_train_never_asks_held_out_phrasings_and_val_test_pair_them(phrased):
    meta = json.load(open(os.path.join(phrased, 'meta.json')))
    held, new, p_template = (np.asarray(meta[k]) for k in ('held_out', 'new_words', 'phrasing_template'))
    tok = Tokenizer.from_dict(meta['tokenizer'])
    for split in ('train', 'val', 'test'):
        ph, t = load(phrased, split, 'phrasing').astype(np.int64), load(phrased, split, 'template')
        q, a, img = load(phrased, split, 'questions'), load(phrased, split, 'answers'), load(phrased, split, 'image_idx')
        assert (p_template[ph] == t).all(), "each question is a phrasing of its own template"
        for j in range(len(ph)):  # the stored tokens are the phrasing's
            assert tok.decode(q[j]) == tok.decode(tok.encode(meta['phrasings'][ph[j]], 16)[0])
        written = [tok.decode(x).partition(':') for x in load(phrased, split, 'answer_text')]
        assert [w[0].strip() for w in written] == [ANSWERS[k] for k in a], "'answer : reason', every word known"
        assert all(w[1] == ':' and w[2].strip() and '<unk>' not in w[2] for w in written), written[:3]
        oos = t == prepare.OUT_OF_SCOPE
        assert (a[oos] == ANSWERS.index(prepare.CANT)).all() and (a[~oos] != ANSWERS.index(prepare.CANT)).all()
        if split == 'train':
            assert not held[ph].any() and oos.any(), "train asks only seen phrasings, out-of-scope ones too"
            continue
        for i in np.unique(img):  # per image and template: one seen, one held out (+ test: one with new words)
            for ti in np.unique(t[img == i]):
                m = (img == i) & (t == ti)
                kinds = sorted(zip(held[ph[m]].tolist(), new[ph[m]].tolist()))
                extra = [(True, True)] if split == 'test' and ti == prepare.OUT_OF_SCOPE else []
                assert kinds == sorted([(False, False), (True, False)] + extra), (split, i, ti, kinds)
                assert len(set(a[m].tolist())) == 1, "the same question, the same answer"
        if split == 'test':
            assert new[ph].any() and all(tok.unknown(meta['phrasings'][k]) for k in ph[new[ph]]), \
                "the new-word questions hold words the tokenizer does not know"


def test_tokenizer_is_the_same_for_every_source(phrased, tmp_path):
    """eval.py refuses a model of other words: the synthetic world and any BDD tree give one vocabulary."""
    root = str(tmp_path / 'bdd')
    make_tree(root, 'det_20', train=('cccc0001-00000001',), val=('dddd0001-00000001',))
    prepare.build(cfg(out=str(tmp_path / 'det')), root, 'bdd100k', 'bdd100k')
    synth = prepare.run(cfg(out=str(tmp_path / 'synth_out')))
    assert os.path.isfile(os.path.join(synth + '_bdd', 'render.json'))   # the world's tree beside it, not in data/
    toks = [json.load(open(os.path.join(d, 'meta.json')))['tokenizer'] for d in (phrased, str(tmp_path / 'det'), synth)]
    assert toks[0] == toks[1] == toks[2]


def test_list_questions_prints_every_phrasing():
    out = subprocess.run([sys.executable, 'prepare.py', '--list_questions=True'], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for _, p, held, new in prepare.PHRASES:
        assert f"{'new words' if new else 'held out' if held else '':9s} {p}" in out.stdout


def test_photometric_augmentation_is_seeded_and_keeps_the_image_format():
    """Same generator state, same jitter (resume relies on it); uint8 in, uint8 out of the same shape; every image
    changes, and a quarter or so of them are JPEG-recompressed on the host."""
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 48, 3), dtype=np.uint8)
    run = lambda seed: prepare.photometric(torch.from_numpy(prepare.recompress(images, torch.Generator().manual_seed(seed))),
                                           torch.Generator().manual_seed(seed))
    a, b, c = run(1), run(1), run(2)
    assert a.dtype == torch.uint8 and a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert (a.numpy() != images).any(axis=(1, 2, 3)).all()
    squeezed = prepare.recompress(images, torch.Generator().manual_seed(0))
    assert 0 < (squeezed != images).any(axis=(1, 2, 3)).sum() < len(images)
