"""
Prepare tvlm's dataset: labelled dash-cam images -> (image, question, answer) memmaps in data/<name>/,
so training never decodes a JPEG.

    python prepare.py                                  # render the embedded synthetic world, then prepare it
    python prepare.py --bdd_root=/data/bdd100k         # real BDD100K (2018, legacy per-image or det_20 labels)
    python prepare.py --bdd_root=/data/bdd100k --max_images=5000 --weather=clear --timeofday=daytime \
                      --img_h=144 --img_w=256 --out=data/bdd_clear --seed=1337 --workers=2 --force=True

The default renders a BDD100K tree (JPEGs + 2018 labels) into data/synthetic_bdd/ and then runs the very same
BDD ingestion on it, so the default proves the real path. Splits: test = BDD's val; val = the ~5% of BDD's
train whose crc32(name) % 100 < 5; train = the rest. The on-disk format (data/<name>/) is in the README, "What is on disk".

Question rules (one set for every source; H and W are the stored image height and width)
  Box coordinates are scaled to the stored image. An object's footprint is the bottom centre of its box.
  There is no horizon label in BDD100K, so every image is read with the same camera: the vanishing point is
  at (W/2, 0.45 H), and the ego lane is the corridor whose edges run from the vanishing point down with
  slope 1.25 (x moves 1.25 px per px below the horizon). An object's lane position is
  u = (x - W/2) / (1.25 * (y - 0.45 H)) at its footprint (x, y): ego lane |u| < 1, left lane -3 < u < -1,
  right lane 1 < u < 3, left side u < -1, right side u > 1.
  Visible: box height >= 0.08 H (traffic lights: >= 0.06 H); tiny, and ignored: < 0.04 H (lights < 0.03 H).
  Close: footprint below 0.59 H; far: footprint above 0.55 H.
  Road users: pedestrian, rider, car, truck, bus, train, motorcycle, bicycle.
  Ambiguity is skipped, never guessed: a question is not asked when an object that could change its answer
  is between tiny and visible, between far and close, or within 0.2 of a lane edge (in u).
  - exist  "Is there a pedestrian / a car / a bus / a cyclist (rider) / a traffic sign?",
           "Are there any trucks?": yes if one of that class is visible, no if all are tiny (or absent).
  - count  "How many cars / pedestrians are close?": visible and close ones, 0..5 or "more than 5".
  - spatial "Is the left / right lane clear?", "Is the road ahead clear?" (ego lane): no if a visible,
           close road user's footprint is in that lane. "Is there a car on the left / right?": yes if a
           visible, close car is on that side.
  - light  The light is the colour of the lit traffic lights: lights that are not tiny must all show the
           same colour (else: lights disagree, skipped) and one of them must be visible; no light at all
           means "no light". "What color is the traffic light?" -> red/yellow/green; "Is the light red?",
           "Is the light green?" -> yes/no. Asked only when there is a light.
  - safety "Should I stop?": yes if the light is red or the road ahead is not clear; no if the light is
           green or there is none, and the road ahead is clear. "Is it safe to go straight?": yes if the
           light is green or there is none, and the road ahead is clear; no if the light is red or yellow,
           or the road ahead is not clear. "Can I safely turn left / right?": the same with "no visible, close
           road user on that side" in place of "the road ahead is clear".
  - scene  "Is it night?": yes at night, no by day (dawn/dusk skipped). "Is it raining?": yes if rainy, no
           if clear, partly cloudy, overcast or foggy (snowy and undefined skipped).
  Each image gets at most one question per family, from the template of that family asked least so far;
  within a template no answer may run ahead of its share (yes/no: half), so a question-only model stays
  near chance.
"""
import glob
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from multiprocessing import Pool
from multiprocessing.pool import ThreadPool

import numpy as np
import torch
from PIL import Image, ImageDraw

from tvlm import Tokenizer, load_image

# -----------------------------------------------------------------------------
# defaults, overridable as --key=value (configurator.py)

bdd_root = ''             # '' renders and prepares the embedded synthetic world
out = ''                  # '' -> data/synthetic or data/bdd100k next to this file
max_images = 0            # >0: at most this many images from each of BDD's train and val
weather = ''              # keep only frames with this weather attribute, e.g. 'clear' ('' keeps all)
timeofday = ''            # keep only frames with this time of day, e.g. 'daytime'
img_h = 144
img_w = 256
max_q_len = 16            # question tokens incl. <bos> and <eos>
seed = 1337
workers = 2
force = False
synth_train = 6300        # synthetic frames rendered into BDD's train (~5% of them become our val)
synth_val = 500           # synthetic frames rendered into BDD's val (our test)
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, str))]

VERSION = 'prepare-3'
FORMAT_VERSION = 2            # bump when the files' layout changes; readers refuse other versions
VAL_PERCENT = 5
ANSWERS = ['yes', 'no', '0', '1', '2', '3', '4', '5', 'more than 5', 'red', 'yellow', 'green']
FAMILIES = ['exist', 'count', 'spatial', 'light', 'safety', 'scene']
BOX_CLASSES = ['pedestrian', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
               'traffic light', 'traffic sign']  # det_20 order (bdd100k configs/det.toml)
CATEGORY_MAP = {**{c: c for c in BOX_CLASSES}, 'person': 'pedestrian', 'bike': 'bicycle', 'motor': 'motorcycle',  # 2018
                'other person': 'pedestrian', 'other vehicle': 'car', 'trailer': 'truck',    # det_20's ignored classes
                'caravan': 'car', 'van': 'car'}
COLOURS = ['none', 'red', 'yellow', 'green']
PATCH_LABELS = BOX_CLASSES + [f'{c} light' for c in COLOURS[1:]]   # what the model's patch head predicts
COLOUR_MAP = {**{c: c for c in COLOURS}, 'r': 'red', 'y': 'yellow', 'g': 'green', 'na': 'none'}  # det_20: R/Y/G/NA

# -----------------------------------------------------------------------------
# question rules: the plain words are in the docstring above; the numbers are here, once

HORIZON, SLOPE = 0.45, 1.25            # vanishing point (W/2, 0.45 H); ego-lane edge slope (px per px)
VISIBLE, TINY = 0.08, 0.04             # box height / H
LIGHT_VISIBLE, LIGHT_TINY = 0.06, 0.03
CLOSE, FAR = 0.59, 0.55                # footprint y / H
LANE_MARGIN = 0.2                      # in lane units u
NO, MAYBE, YES = 0, 1, 2               # three-valued logic: AND is min, OR is max
ROAD_USERS = [BOX_CLASSES.index(c) for c in BOX_CLASSES[:8]]
TEMPLATES = [('exist', 'Is there a pedestrian?'), ('exist', 'Is there a car?'), ('exist', 'Are there any trucks?'),
             ('exist', 'Is there a bus?'), ('exist', 'Is there a cyclist?'), ('exist', 'Is there a traffic sign?'),
             ('count', 'How many cars are close?'), ('count', 'How many pedestrians are close?'),
             ('spatial', 'Is the left lane clear?'), ('spatial', 'Is the right lane clear?'),
             ('spatial', 'Is the road ahead clear?'), ('spatial', 'Is there a car on the left?'),
             ('spatial', 'Is there a car on the right?'),
             ('light', 'What color is the traffic light?'), ('light', 'Is the light red?'),
             ('light', 'Is the light green?'),
             ('safety', 'Can I safely turn left?'), ('safety', 'Can I safely turn right?'),
             ('safety', 'Is it safe to go straight?'), ('safety', 'Should I stop?'),
             ('scene', 'Is it night?'), ('scene', 'Is it raining?')]
EXIST_CLASS = {'Is there a pedestrian?': 'pedestrian', 'Is there a car?': 'car', 'Are there any trucks?': 'truck',
               'Is there a bus?': 'bus', 'Is there a cyclist?': 'rider', 'Is there a traffic sign?': 'traffic sign'}
MAX_SHARE = {'What color is the traffic light?': 0.45, 'How many cars are close?': 0.3,   # of a template's
             'How many pedestrians are close?': 0.3}     # questions one answer may take; yes/no: 0.5
SLACK = 3                                   # ...plus this many, so the first images are not starved


def tri(v, lo, hi):
    """v >= hi -> YES, v < lo -> NO, else MAYBE (elementwise)."""
    return np.where(v >= hi, YES, np.where(v < lo, NO, MAYBE)).astype(np.int8)


def between(u, a, b):
    """Is lane position u inside (a, b)? MAYBE within LANE_MARGIN of an edge."""
    inside = (u > a + LANE_MARGIN) & (u < b - LANE_MARGIN)
    outside = (u < a - LANE_MARGIN) | (u > b + LANE_MARGIN)
    return np.where(inside, YES, np.where(outside, NO, MAYBE)).astype(np.int8)


def object_facts(boxes, cls, H, W):
    """Three-valued facts about each box; boxes float[M, 4] x1,y1,x2,y2 in stored pixels."""
    x, y, h = (boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3], boxes[:, 3] - boxes[:, 1]  # footprint, height
    u = (x - W / 2) / (SLOPE * np.maximum(y - HORIZON * H, 1e-3))   # above the horizon: huge |u|, never close
    visible = tri(h, TINY * H, VISIBLE * H)
    close = np.minimum(tri(y, FAR * H, CLOSE * H), visible)
    road = np.isin(cls, ROAD_USERS).astype(np.int8) * YES
    f = {'visible': visible, 'close_road': np.minimum(road, close), 'close': close,
         'light_seen': tri(h, LIGHT_TINY * H, LIGHT_VISIBLE * H)}
    for side, (a, b) in {'ego': (-1, 1), 'left_lane': (-3, -1), 'right_lane': (1, 3),
                         'left': (-np.inf, -1), 'right': (1, np.inf)}.items():
        f[side] = between(u, a, b)
    return f


def any_of(p):
    """OR over objects -> ('yes', 'no' or None if unsure, rows that are YES)."""
    return {YES: 'yes', NO: 'no'}.get(int(p.max(initial=NO))), np.flatnonzero(p == YES)


def light_state(f, cls, colour):
    """-> ('red'|'yellow'|'green'|'none' or None if unsure, rows of the deciding lights)."""
    lit = (cls == BOX_CLASSES.index('traffic light')) & (colour > 0) & (f['light_seen'] >= MAYBE)
    rows = np.flatnonzero(lit)
    if len(rows) == 0:
        return 'none', rows
    if len(set(colour[rows].tolist())) > 1 or not (f['light_seen'][rows] == YES).any():
        return None, rows                               # lights disagree, or all too small to read
    return COLOURS[colour[rows[0]]], rows


def go_rule(light, blocked, refs):
    """'yes' if the light allows it and the way is clear, 'no' if either forbids it, None if unsure."""
    if light in ('red', 'yellow') or blocked[0] == 'yes':    # blocked = any_of(obstacles in the way)
        return 'no', refs if light in ('red', 'yellow') else blocked[1]
    if light in ('green', 'none') and blocked[0] == 'no':
        return 'yes', refs
    return None, refs


def candidates(boxes, cls, colour, attrs, H, W):
    """Every decidable (template id, answer, referent rows) for one image."""
    f = object_facts(boxes, cls, H, W)
    is_cls = lambda name: (cls == BOX_CLASSES.index(name)).astype(np.int8) * YES
    negate = {'yes': 'no', 'no': 'yes'}
    ans = {q: any_of(np.minimum(is_cls(c), f['visible'])) for q, c in EXIST_CLASS.items()}
    for q, c in [('How many cars are close?', 'car'), ('How many pedestrians are close?', 'pedestrian')]:
        p = np.minimum(is_cls(c), f['close'])
        rows = np.flatnonzero(p == YES)
        ans[q] = (None if (p == MAYBE).any() else (str(len(rows)) if len(rows) <= 5 else 'more than 5'), rows)
    blocked = {s: any_of(np.minimum(f['close_road'], f[s])) for s in ('ego', 'left_lane', 'right_lane', 'left', 'right')}
    for q, s in [('Is the left lane clear?', 'left_lane'), ('Is the right lane clear?', 'right_lane'),
                 ('Is the road ahead clear?', 'ego')]:
        ans[q] = (negate.get(blocked[s][0]), blocked[s][1])
    for q, s in [('Is there a car on the left?', 'left'), ('Is there a car on the right?', 'right')]:
        ans[q] = any_of(np.minimum(np.minimum(is_cls('car'), f['close']), f[s]))
    light, lrows = light_state(f, cls, colour)
    if light in ('red', 'yellow', 'green'):
        ans['What color is the traffic light?'] = (light, lrows)
        ans['Is the light red?'] = ('yes' if light == 'red' else 'no', lrows)
        ans['Is the light green?'] = ('yes' if light == 'green' else 'no', lrows)
    for q, s in [('Can I safely turn left?', 'left'), ('Can I safely turn right?', 'right'),
                 ('Is it safe to go straight?', 'ego')]:
        ans[q] = go_rule(light, blocked[s], lrows)
    straight = ans['Is it safe to go straight?']
    stop = negate.get(straight[0]) if light != 'yellow' or blocked['ego'][0] == 'yes' else None
    ans['Should I stop?'] = (stop, straight[1])
    ans['Is it night?'] = ({'night': 'yes', 'daytime': 'no'}.get(attrs.get('timeofday')), [])
    ans['Is it raining?'] = ({'rainy': 'yes', 'clear': 'no', 'partly cloudy': 'no', 'overcast': 'no',
                              'foggy': 'no'}.get(attrs.get('weather')), [])
    return [(t, ans[q][0], np.asarray(ans[q][1], dtype=np.int64)) for t, (_, q) in enumerate(TEMPLATES)
            if ans.get(q, (None,))[0] is not None]


def choose_questions(cands, counts, rng):
    """At most one question per family: the family's template asked least so far, among those whose answer
    here has not run ahead of its share of that template. counts: int[templates, answers], updated in place."""
    picked = []
    for fam in FAMILIES:
        opts = []
        for t, a, rows in cands:
            ai, total = ANSWERS.index(a), counts[t].sum()
            if TEMPLATES[t][0] == fam and counts[t, ai] <= MAX_SHARE.get(TEMPLATES[t][1], 0.5) * total + SLACK:
                opts.append((total, t, ai, rows))
        if opts:
            low = [o for o in opts if o[0] == min(o[0] for o in opts)]
            _, t, ai, rows = low[rng.integers(len(low))]
            counts[t, ai] += 1
            picked.append((t, ai, rows))
    return picked

# -----------------------------------------------------------------------------
# BDD100K ingestion: 2018 aggregated, legacy per-image and 2020 det_20 labels (../shared/BDD100K_FORMAT.md)

class LabelError(ValueError):
    """A labels file that cannot be read; the message names the file and what is wrong."""


def read_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise LabelError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise LabelError(f"{path}: not UTF-8 text ({e.reason})") from None


def find_labels(root):
    """-> (source_format, {bdd split: [(path, frame dict)]}), detecting the label format from the tree."""
    lab = os.path.join(root, 'labels')
    layouts = [('det_20', lambda s: [os.path.join(lab, 'det_20', f'det_{s}.json')]),
               ('2018', lambda s: [os.path.join(lab, f'bdd100k_labels_images_{s}.json')]),
               ('legacy', lambda s: sorted(glob.glob(os.path.join(lab, '100k', s, '*.json'))))]
    for fmt, paths in layouts:
        found = {s: [p for p in paths(s) if os.path.isfile(p)] for s in ('train', 'val')}
        if any(found.values()):
            return fmt, {s: [(p, fr) for p in ps for fr in frames_of(read_json(p), p)] for s, ps in found.items()}
    raise LabelError(f"{root}: no BDD100K labels found; expected labels/det_20/det_{{train,val}}.json, "
                     f"labels/bdd100k_labels_images_{{train,val}}.json or labels/100k/{{train,val}}/<name>.json")


def frames_of(data, path):
    """A bare list of frames, {"frames": [...]} (Scalabel), or one legacy per-image {"name", "frames": [{"objects"}]}."""
    if isinstance(data, dict) and 'name' in data and isinstance(data.get('frames'), list):
        objs = data['frames'][0].get('objects') if data['frames'] and isinstance(data['frames'][0], dict) else None
        return [{'name': data['name'], 'attributes': data.get('attributes'), 'labels': objs}]
    if isinstance(data, dict) and isinstance(data.get('frames'), list):
        data = data['frames']
    if not isinstance(data, list):
        raise LabelError(f"{path}: expected a list of frames or {{\"frames\": [...]}}, got {type(data).__name__}")
    return data


def parse_frame(frame, path, skipped):
    """frame dict -> (name without .jpg, attributes, [(x1, y1, x2, y2, class id, colour id)]) in source pixels."""
    if not isinstance(frame, dict) or not isinstance(frame.get('name'), str):
        raise LabelError(f"{path}: a frame without a string 'name': {str(frame)[:80]}")
    name = frame['name'][:-4] if frame['name'].lower().endswith('.jpg') else frame['name']
    attrs = frame.get('attributes') or {}
    labels = frame.get('labels') or []                  # missing or null: an image with no objects
    if not isinstance(attrs, dict) or not isinstance(labels, list):
        raise LabelError(f"{path}: frame {name}: 'attributes' must be a dict and 'labels' a list")
    boxes = []
    for lab in labels:
        if not isinstance(lab, dict):
            raise LabelError(f"{path}: frame {name}: a label is {type(lab).__name__}, not a dict")
        box = lab.get('box2d')
        if box is None:
            continue                                    # drivable area, lane, segmentation: no box
        try:
            x1, y1, x2, y2 = (float(box[k]) for k in ('x1', 'y1', 'x2', 'y2'))
        except (KeyError, TypeError, ValueError):
            raise LabelError(f"{path}: frame {name}: box2d needs numbers x1, y1, x2, y2, got {box}") from None
        cat = CATEGORY_MAP.get(str(lab.get('category')))
        if cat is None:
            why = f"unknown category '{lab.get('category')}'"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        colour = COLOUR_MAP.get(str((lab.get('attributes') or {}).get('trafficLightColor', 'none')).lower(), 'none')
        boxes.append((x1, y1, x2, y2, BOX_CLASSES.index(cat), COLOURS.index(colour)))
    return name, {k: v for k, v in attrs.items() if isinstance(v, str)}, boxes


def load_frames(root, cfg, skipped):
    """-> (source_format, {our split: [(name, image path, attrs, boxes)]}), filtered, capped and sorted by name."""
    fmt, raw = find_labels(root)
    splits = {'train': [], 'val': [], 'test': []}
    for bdd_split, items in raw.items():
        frames = sorted((parse_frame(fr, p, skipped) for p, fr in items), key=lambda f: f[0])
        kept = [f for f in frames if all(not cfg[k] or f[1].get(k) == cfg[k] for k in ('weather', 'timeofday'))]
        if len(kept) < len(frames):
            skipped['filtered out'] = skipped.get('filtered out', 0) + len(frames) - len(kept)
        if cfg['max_images'] > 0:
            kept = kept[:cfg['max_images']]
        for name, attrs, boxes in kept:
            path = os.path.join(root, 'images', '100k', bdd_split, name + '.jpg')
            split = 'test' if bdd_split == 'val' else ('val' if zlib.crc32(name.encode()) % 100 < VAL_PERCENT else 'train')
            splits[split].append((name, path, attrs, boxes))
    return fmt, splits


def decode(job):
    """Worker: (path, h, w) -> (uint8[h, w, 3], (W, H) of the source) or (None, reason)."""
    path, h, w = job
    try:
        with Image.open(path) as im:
            size = im.size
        return load_image(path, h, w), size
    except FileNotFoundError:
        return None, 'missing image'
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, 'corrupt image'


def scale_boxes(boxes, size, h, w, skipped):
    """Source-pixel boxes -> float32[M, 4] in stored pixels (load_image's centre crop + resize), clipped,
    degenerate ones dropped; also int16 class[M], int8 colour[M]."""
    W, H = size
    cw, ch = (round(H * w / h), H) if W * h > H * w else (W, round(W * h / w))
    ox, oy = (W - cw) // 2, (H - ch) // 2
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)                    # (M, 6) x1, y1, x2, y2, class, colour
    b = np.clip((a[:, :4] - [ox, oy, ox, oy]) * [w / cw, h / ch, w / cw, h / ch], 0, [w, h, w, h])   # (M, 4)
    ok = np.isfinite(b).all(1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    if (~ok).any():
        skipped['degenerate box'] = skipped.get('degenerate box', 0) + int((~ok).sum())
    return b[ok].astype(np.float32), a[ok, 4].astype(np.int16), a[ok, 5].astype(np.int8)

# -----------------------------------------------------------------------------
# the embedded synthetic world: a BDD100K tree rendered with PIL in perspective

RW, RH = 640, 360          # rendered JPEG size: a quarter of BDD's pixels, still >= 2x the stored size
FOCAL, CAM_H, LANE_W = 460.0, 1.44, 3.6   # CAM_H = LANE_W / 2 / SLOPE, so drawn lanes sit at u = +-1, +-3
NAMES_2018 = {'pedestrian': 'person', 'bicycle': 'bike', 'motorcycle': 'motor'}
LIGHT_RGB = {'red': (255, 40, 30), 'yellow': (255, 200, 0), 'green': (40, 255, 90)}
PALETTE = [(200, 30, 30), (30, 60, 180), (230, 230, 230), (25, 25, 25), (120, 120, 125), (200, 170, 40),
           (40, 130, 60), (150, 40, 120), (230, 110, 20), (90, 160, 200)]


class Cam:
    """Pinhole camera CAM_H above flat ground; (X right, Y up, Z ahead) in metres -> pixels."""
    def __init__(self, vx, yh):
        self.vx, self.yh = vx, yh

    def __call__(self, X, Y, Z):
        return self.vx + FOCAL * X / Z, self.yh + FOCAL * (CAM_H - Y) / Z

    def box(self, o):
        """An object's box: o['w'] x o['h'] metres centred on o['X'], o['Z'] ahead, o['y0'] off the ground."""
        X, Z, w = o['X'], o['Z'], o['w']
        (x1, y1), (x2, y2) = self(X - w / 2, o['y0'] + o['h'], Z), self(X + w / 2, o['y0'], Z)
        return [x1, y1, x2, y2]


def sample_layout(rng):
    """Frame attributes and road geometry."""
    nl = int(rng.integers(0, 3))
    nr = int(rng.integers(0, 4 - nl)) if nl < 3 else 0
    t = rng.choice(['daytime', 'dawn/dusk', 'night'], p=[0.5, 0.15, 0.35])
    return {'timeofday': str(t), 'weather': str(rng.choice(['clear', 'rainy', 'foggy'], p=[0.5, 0.35, 0.15])),
            'scene': str(rng.choice(['city street', 'highway', 'residential'], p=[0.55, 0.2, 0.25])),
            'left': -LANE_W / 2 - LANE_W * nl, 'right': LANE_W / 2 + LANE_W * nr, 'nl': nl, 'nr': nr,
            'parking': bool(rng.random() < 0.6), 'shade': {'daytime': 1.0, 'dawn/dusk': 0.75, 'night': 0.5}[t],
            'cam': Cam(RW / 2 + rng.uniform(-0.005, 0.005) * RW, HORIZON * RH + rng.uniform(-0.008, 0.008) * RH)}


def unambiguous(o):
    """Is a synthetic object clear of the rules' MAYBE bands (size, close/far, lane edge)? Judged with the
    rules' fixed camera, the bands widened by the horizon jitter, so most questions stay decidable."""
    x1, y1, x2, y2 = np.clip(Cam(RW / 2, HORIZON * RH).box(o), 0, [RW, RH, RW, RH])
    h, y = (y2 - y1) / RH, y2 / RH
    lo, hi = (LIGHT_TINY, LIGHT_VISIBLE) if o['kind'] == 'traffic light' else (TINY, VISIBLE)
    if lo - 0.005 <= h < hi + 0.005 or FAR - 0.012 <= y < CLOSE + 0.012:
        return False
    u = abs((x1 + x2) / 2 - RW / 2) / (SLOPE * max(y2 - HORIZON * RH, 1e-3))
    return y < FAR or min(abs(u - 1), abs(u - 3)) > LANE_MARGIN + 0.12


def thing(kind, X, Z, w, h, rgb, y0=0.0, light='none'):
    """A labelled object: w x h metres at X right and Z ahead, y0 off the ground."""
    return dict(kind=kind, X=X, Z=Z, w=w, h=h, y0=y0, rgb=rgb, light=light)


def place(make, Zs, rng, tries=8):
    """make(Z) -> object; retry depths from the ranges Zs until it is unambiguous, else None."""
    for _ in range(tries):
        lo, hi = Zs[rng.integers(len(Zs))]
        o = make(rng.uniform(lo, hi))
        if unambiguous(o):
            return o
    return None


def sample_objects(L, rng):
    """Vehicles, pedestrians and perhaps a cyclist, then street furniture; near ones drawn to spread the counts."""
    objs, lanes = [], list(range(-L['nl'], L['nr'] + 1))
    park = [L['left'] - 1.3, L['right'] + 1.3] if L['parking'] else []
    slots = [(LANE_W * k, 'lane') for k in lanes] + [(x, 'park') for x in park]
    near_n, far_n = int(rng.choice(9, p=[0.1, 0.12, 0.14, 0.14, 0.14, 0.12, 0.1, 0.08, 0.06])), int(rng.integers(0, 9))
    for Zs, n in [([(5.5, 12.0)], near_n), ([(19.5, 40), (40, 95)], far_n)]:
        for _ in range(n):
            X, kind = slots[rng.integers(len(slots))]
            v = str(rng.choice(['car', 'truck', 'bus'], p=[0.7, 0.15, 0.15])) if kind == 'lane' else 'car'
            w, h = {'car': (1.8, 1.5), 'truck': (2.4, 3.2), 'bus': (2.5, 3.0)}[v]
            rgb, X, h = PALETTE[rng.integers(len(PALETTE))], X + rng.uniform(-0.25, 0.25), h * rng.uniform(0.92, 1.08)
            o = place(lambda Z: thing(v, X, Z, w, h, rgb), Zs, rng)
            if o and not any(abs(p['X'] - X) < 1.5 and abs(p['Z'] - o['Z']) < 5.0 for p in objs):
                objs.append(o)                          # else that spot is taken
    walk = [(L['left'] - 2.4 * L['parking'] - 0.5, -2.5), (L['right'] + 2.4 * L['parking'] + 0.5, 2.5)]
    for near, n in [(True, int(rng.choice(10, p=[0.2, 0.12, 0.11, 0.11, 0.1, 0.1, 0.08, 0.07, 0.06, 0.05]))),
                    (False, int(rng.integers(0, 4)))]:
        for _ in range(n):
            edge, span = walk[rng.integers(2)]
            crossing = not near and rng.random() < 0.25
            X = rng.uniform(L['left'], L['right']) if crossing else edge + rng.uniform(0, 1) * span
            h, rgb = rng.uniform(1.5, 1.9), PALETTE[rng.integers(len(PALETTE))]
            Zs = [(5.0, 12.0)] if near else [(19.5, 70)]
            objs.append(place(lambda Z: thing('pedestrian', X, Z, 0.55, h, rgb), Zs, rng))
    if rng.random() < 0.3:                              # a cyclist: rider and bicycle, labelled apart as in BDD
        X, rgb = (L['right'] - 0.6 if rng.random() < 0.7 else walk[1][0] + 1), PALETTE[rng.integers(len(PALETTE))]
        bike = place(lambda Z: thing('bicycle', X, Z, 0.6, 1.05, (30, 30, 30)), [(6, 12), (19.5, 40)], rng)
        rider = bike and thing('rider', X, bike['Z'] - 0.01, 0.55, 1.45, rgb, y0=0.35)
        objs += [bike, rider] if rider and unambiguous(rider) else []
    return [o for o in objs + street_furniture(L, rng) if o]


def street_furniture(L, rng):
    """Traffic lights (one colour per intersection) and signs on poles."""
    objs = []
    if rng.random() < 0.6:
        colour = str(rng.choice(['red', 'yellow', 'green'], p=[0.4, 0.2, 0.4]))
        Z = rng.uniform(12, 22)
        for X in [rng.uniform(-1.2, 1.2)] + ([L['right'] + 0.8] if rng.random() < 0.5 else []):
            objs.append(thing('traffic light', X, Z, 0.45, 1.2, (25, 25, 20), 4.6 if abs(X) < 2 else 2.8, colour))
        if rng.random() < 0.3:                          # the next intersection: too small to read
            objs.append(thing('traffic light', rng.uniform(-1, 1), rng.uniform(55, 80), 0.45, 1.2, (25, 25, 20),
                              4.6, str(rng.choice(['red', 'yellow', 'green']))))
    for _ in range(int(rng.integers(0, 3))):
        X = (L['right'] + 1.0) if rng.random() < 0.6 else (L['left'] - 1.0)
        rgb = [(200, 20, 20), (20, 70, 170), (230, 190, 0)][rng.integers(3)]
        objs.append(place(lambda Z: thing('traffic sign', X, Z, 0.8, 0.8, rgb, 2.0), [(8, 12), (26, 45)], rng))
    return objs


def cull(objs, cam):
    """Keep objects inside the frame and less than half hidden by nearer ones (BDD labels what a person can see)."""
    mask = np.zeros((RH // 4, RW // 4), dtype=bool)     # coarse occupancy, near to far
    kept = []
    for o in sorted(objs, key=lambda o: o['Z']):
        x1, y1, x2, y2 = (int(round(v / 4)) for v in cam.box(o))
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, RW // 4), min(y2, RH // 4)
        if x2 <= x1 or y2 <= y1:
            continue
        region = mask[y1:y2, x1:x2]
        if region.mean() < 0.5:
            kept.append(o)
            if o['kind'] not in ('traffic light', 'traffic sign', 'rider'):
                region[:] = True                         # too thin to hide much; a rider never hides its bike
    return kept[::-1]                                    # far to near: the drawing order


def shade(rgb, s):
    return tuple(int(c * s) for c in rgb)


def draw_world(d, L, rng):
    """Sky, ground, buildings, road, parking strips, sidewalks, lane markings, trees and street lamps."""
    cam, s = L['cam'], L['shade']
    sky = {'daytime': (120, 165, 220), 'dawn/dusk': (215, 140, 100), 'night': (12, 15, 35)}[L['timeofday']]
    d.rectangle([0, 0, RW, cam.yh + 1], fill=sky if L['weather'] == 'clear' else shade((150, 152, 158), s))
    d.rectangle([0, cam.yh, RW, RH], fill=shade((95, 110, 80), s))
    for side in (-1, 1):
        X0 = (L['left'] if side < 0 else L['right']) + side * (2.4 * L['parking'] + 3.0)
        Z = 140.0
        while Z > 6:                                     # facades parallel to the road, far to near
            Z1, hb, X = Z - rng.uniform(8, 25), rng.uniform(5, 22), X0 + side * rng.uniform(0.5, 4)
            quad = [cam(X, 0, max(Z1, 4)), cam(X, 0, Z), cam(X, hb, Z), cam(X, hb, max(Z1, 4))]
            d.polygon(quad, fill=shade(PALETTE[rng.integers(len(PALETTE))], 0.6 * s))
            for _ in range(3 if L['timeofday'] == 'night' else 0):   # lit windows
                zw, yw = rng.uniform(max(Z1, 4), Z), rng.uniform(2, hb - 1)
                (wx, wy), r = cam(X, yw, zw), 150 / zw
                d.rectangle([wx - r, wy - r, wx + r, wy + r], fill=(230, 200, 110))
            Z = Z1
    edge = lambda X, y: cam.vx + X / CAM_H * (y - cam.yh)   # ground line X across the image
    y0, y1, strip = cam.yh + 0.5, RH, 2.4 * L['parking']
    for (a, b), col in [((L['left'] - strip - 3, L['right'] + strip + 3), (150, 148, 140)),
                        ((L['left'] - strip, L['right'] + strip), (80, 80, 84)), ((L['left'], L['right']), (70, 70, 74))]:
        d.polygon([(edge(a, y0), y0), (edge(b, y0), y0), (edge(b, y1), y1), (edge(a, y1), y1)], fill=shade(col, s))
    white = shade((235, 235, 230), max(s, 0.7))
    for X in (L['left'] + 0.1, L['right'] - 0.1):
        d.line([(edge(X, y0), y0), (edge(X, y1), y1)], fill=white, width=2)
    for k in range(-L['nl'], L['nr']):                   # dashed lines between lanes
        X, z = LANE_W / 2 + LANE_W * k, 3.0
        while z < 90:
            d.polygon([cam(X - 0.08, 0, z), cam(X + 0.08, 0, z), cam(X + 0.08, 0, z + 3), cam(X - 0.08, 0, z + 3)], fill=white)
            z += 9
    draw_roadside(d, L, rng)


def draw_roadside(d, L, rng):
    """Trees and street lamps along the outer edge of the sidewalks, far to near; lamps glow at night."""
    cam, s = L['cam'], L['shade']
    for side in (-1, 1):
        X = (L['left'] if side < 0 else L['right']) + side * (2.4 * L['parking'] + 2.6)
        for Z in sorted(rng.uniform(6, 80, size=int(rng.integers(2, 7))), reverse=True):
            (x, y), (_, yt) = cam(X, 0, Z), cam(X, 6, Z)
            if rng.random() < 0.5:
                r = 1.6 * FOCAL / Z
                d.rectangle([x - 0.12 * r, (y + yt) / 2, x + 0.12 * r, y], fill=shade((90, 65, 40), s))
                d.ellipse([x - r, yt - 0.6 * r, x + r, (y + yt) / 2 + 0.3 * r], fill=shade((50, 120, 50), s))
            else:
                night = L['timeofday'] == 'night'
                d.line([(x, y), (x, yt)], fill=shade((110, 110, 115), s), width=max(1, int(20 / Z)))
                r = (0.4 if night else 0.15) * FOCAL / Z
                d.ellipse([x - r, yt - r, x + r, yt + r], fill=(255, 230, 160) if night else (200, 200, 200))


def draw_object(d, o, cam, L):
    """One labelled object, as seen from behind (vehicles) or from the front (people)."""
    x1, y1, x2, y2 = cam.box(o)
    w, h, s, night = x2 - x1, y2 - y1, L['shade'], L['timeofday'] == 'night'
    rgb = shade(o['rgb'], max(s, 0.65))
    if o['kind'] in ('car', 'truck', 'bus'):
        top = y1 + (0.35 * h if o['kind'] == 'car' else 0)
        d.rectangle([x1, top, x2, y2 - 0.12 * h], fill=rgb)
        if o['kind'] == 'car':
            d.polygon([(x1 + 0.1 * w, top), (x1 + 0.2 * w, y1), (x2 - 0.2 * w, y1), (x2 - 0.1 * w, top)], fill=shade(rgb, 0.8))
            d.rectangle([x1 + 0.22 * w, y1 + 0.08 * h, x2 - 0.22 * w, top - 0.02 * h], fill=(40, 50, 60))
        elif o['kind'] == 'bus':
            d.rectangle([x1 + 0.08 * w, y1 + 0.1 * h, x2 - 0.08 * w, y1 + 0.4 * h], fill=(40, 50, 60))
        d.rectangle([x1, y2 - 0.12 * h, x1 + 0.2 * w, y2], fill=(15, 15, 15))
        d.rectangle([x2 - 0.2 * w, y2 - 0.12 * h, x2, y2], fill=(15, 15, 15))
        tail = (255, 30, 30) if night else (170, 20, 20)
        for lx in (x1 + 0.04 * w, x2 - 0.16 * w):
            d.rectangle([lx, y2 - 0.35 * h, lx + 0.12 * w, y2 - 0.25 * h], fill=tail)
    elif o['kind'] in ('pedestrian', 'rider'):
        d.ellipse([x1 + 0.25 * w, y1, x2 - 0.25 * w, y1 + 0.14 * h], fill=shade((225, 180, 150), max(s, 0.6)))
        d.rectangle([x1 + 0.1 * w, y1 + 0.14 * h, x2 - 0.1 * w, y1 + 0.55 * h], fill=rgb)
        d.rectangle([x1 + 0.2 * w, y1 + 0.55 * h, x2 - 0.2 * w, y2], fill=shade((40, 45, 70), max(s, 0.6)))
    elif o['kind'] == 'bicycle':
        lw = max(1, int(w / 6))
        d.ellipse([x1 + 0.3 * w, y1 + 0.1 * h, x2 - 0.3 * w, y2], outline=(20, 20, 20), width=lw)
        d.line([(x1, y1 + 0.3 * h), (x2, y1 + 0.3 * h)], fill=(20, 20, 20), width=lw)
    else:                                                # traffic lights and signs stand on poles
        sign, (px, ground) = o['kind'] == 'traffic sign', cam(o['X'], 0, o['Z'])
        d.line([(px, y2), (px, ground)], fill=(90, 90, 90) if sign else (70, 70, 70),
               width=max(1, int(w / (8 if sign else 4))))
        if sign:
            d.ellipse([x1, y1, x2, y2], fill=shade(o['rgb'], max(s, 0.7)), outline=(240, 240, 240))
            return
        d.rectangle([x1, y1, x2, y2], fill=o['rgb'])     # dark housing; lamps red over yellow over green, one lit
        for i, c in enumerate(['red', 'yellow', 'green']):
            cy, r = y1 + (i + 0.5) * h / 3, 0.36 * w
            fill = LIGHT_RGB[c] if o['light'] == c else shade(LIGHT_RGB[c], 0.2)
            d.ellipse([x1 + w / 2 - r, cy - r, x1 + w / 2 + r, cy + r], fill=fill)


def weather_fx(img, L, rng):
    """Rain streaks, fog, and the dark of night."""
    if L['weather'] == 'rainy':
        d = ImageDraw.Draw(img)
        for _ in range(160):
            x, y = rng.uniform(0, RW), rng.uniform(0, RH)
            d.line([(x, y), (x - 3, y + 14)], fill=(170, 175, 185), width=1)
    if L['weather'] == 'foggy':
        img = Image.blend(img, Image.new('RGB', img.size, (185, 188, 192)), 0.35)
    return img


def render_frame(job):
    """Worker: (root, bdd split, index, seed) -> the frame's 2018 label dict; writes its JPEG."""
    root, split, i, base_seed = job
    rng = np.random.default_rng([base_seed, ('train', 'val').index(split), i])
    digest = hashlib.md5(f'{base_seed}/{split}/{i}'.encode()).hexdigest()
    name = f'{digest[:8]}-{digest[8:16]}'
    L = sample_layout(rng)
    objs = cull(sample_objects(L, rng), L['cam'])
    img = Image.new('RGB', (RW, RH))
    d = ImageDraw.Draw(img)
    draw_world(d, L, rng)
    for o in objs:
        draw_object(d, o, L['cam'], L)
    img = weather_fx(img, L, rng)
    img.save(os.path.join(root, 'images', '100k', split, name + '.jpg'), quality=int(rng.integers(70, 91)))
    labels = []
    for k, o in enumerate(objs):
        box = np.clip(L['cam'].box(o), 0, [RW, RH, RW, RH])
        truncated = bool(box[0] <= 0 or box[2] >= RW or box[3] >= RH)
        labels.append({'category': NAMES_2018.get(o['kind'], o['kind']), 'id': k, 'manualShape': True,
                       'attributes': {'occluded': False, 'truncated': truncated, 'trafficLightColor': o['light']},
                       'box2d': {c: round(float(v), 3) for c, v in zip(('x1', 'y1', 'x2', 'y2'), box)}})
    attrs = {k: L[k] for k in ('weather', 'scene', 'timeofday')}
    return {'name': name + '.jpg', 'attributes': attrs, 'timestamp': 10000, 'labels': labels}


def render_tree(root, cfg, pool):
    """Render the synthetic BDD100K tree once; reuse it when render.json matches."""
    spec = {'version': VERSION, 'seed': cfg['seed'], 'train': cfg['synth_train'], 'val': cfg['synth_val'], 'size': [RW, RH]}
    done = os.path.join(root, 'render.json')
    if os.path.exists(done) and read_json(done) == spec:
        print(f"reusing the synthetic BDD100K tree in {root}")
        return
    tmp = f'{root}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    for split in ('train', 'val'):
        os.makedirs(os.path.join(tmp, 'images', '100k', split))
        jobs = [(tmp, split, i, cfg['seed']) for i in range(cfg[f'synth_{split}'])]
        frames = list(progress(pool.imap(render_frame, jobs, chunksize=16), len(jobs), f'render {split}'))
        os.makedirs(os.path.join(tmp, 'labels'), exist_ok=True)
        with open(os.path.join(tmp, 'labels', f'bdd100k_labels_images_{split}.json'), 'w') as fh:
            json.dump(sorted(frames, key=lambda f: f['name']), fh)
    with open(os.path.join(tmp, 'render.json'), 'w') as fh:
        json.dump(spec, fh)                              # last: a tree without it is never reused
    replace_dir(tmp, root)

# -----------------------------------------------------------------------------
# writer: data/<name>/ in the README's format, built in a temp folder and renamed into place


def progress(it, n, what):
    """Yield from it, printing images/s and ETA about twice a second."""
    t0 = last = time.time()
    for i, x in enumerate(it, 1):
        yield x
        now = time.time()
        if now - last > 0.5 or i == n:
            rate = i / max(now - t0, 1e-9)
            print(f"\r{what}: {i}/{n} images, {rate:.0f} img/s, ETA {(n - i) / rate:.0f}s   ", end='', flush=True)
            last = now
    print()


def replace_dir(tmp, final):
    """Atomically swap a finished folder into place (os.replace cannot replace a non-empty folder)."""
    old = f'{final}.old-{os.getpid()}'
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def decode_split(path, items, cfg, pool, skipped, stats):
    """Decode every image straight into the images memmap; -> kept items with boxes in stored pixels."""
    h, w = cfg['img_h'], cfg['img_w']
    images = np.lib.format.open_memmap(path, mode='w+', dtype=np.uint8, shape=(len(items), h, w, 3))  # (N, H, W, 3)
    kept = []
    results = pool.imap(decode, [(p, h, w) for _, p, _, _ in items], chunksize=8)
    for (name, _, attrs, boxes), (img, info) in zip(items, progress(results, len(items), os.path.basename(path))):
        if img is None:
            skipped[info] = skipped.get(info, 0) + 1
            continue
        images[len(kept)] = img
        if stats is not None:
            px = img.reshape(-1, 3).astype(np.float64)     # (H*W, 3)
            stats += np.stack([px.sum(0), (px ** 2).sum(0), np.full(3, len(px))])
        kept.append((name, attrs, *scale_boxes(boxes, info, h, w, skipped)))
    images.flush()
    if len(kept) < len(items):                          # skipped images: copy the kept rows to a shorter file
        short = np.lib.format.open_memmap(path + '.short', mode='w+', dtype=np.uint8, shape=(len(kept), h, w, 3))
        for i in range(0, len(kept), 256):
            short[i:i + 256] = images[i:min(i + 256, len(kept))]
        short.flush()
        del images, short
        os.replace(path + '.short', path)
    return kept


def write_split(tmp, split, items, cfg, pool, skipped, tok, stats=None):
    """All of one split's files; -> (answers int[Q], templates int[Q]) for the stats."""
    kept = decode_split(os.path.join(tmp, f'{split}_images.npy'), items, cfg, pool, skipped, stats)
    counts = np.zeros((len(TEMPLATES), len(ANSWERS)), dtype=np.int64)
    qs, box_offsets, q_offsets = [], [0], [0]          # qs: (template, answer, image, split-global box rows)
    for i, (name, attrs, boxes, cls, colour) in enumerate(kept):
        rng = np.random.default_rng([cfg['seed'], zlib.crc32(name.encode())])
        cands = candidates(boxes, cls, colour, attrs, cfg['img_h'], cfg['img_w'])
        qs += [(t, a, i, refs + box_offsets[-1]) for t, a, refs in choose_questions(cands, counts, rng)]
        box_offsets.append(box_offsets[-1] + len(boxes))
        q_offsets.append(len(qs))
    template, answer, image, refs = zip(*qs) if qs else [()] * 4
    enc = np.stack([tok.encode(q, cfg['max_q_len'])[0] for _, q in TEMPLATES]).astype(np.uint16)  # (templates, T)
    template = np.asarray(template, dtype=np.int16)
    arrays = {'boxes': np.concatenate([k[2] for k in kept] + [np.zeros((0, 4), np.float32)]),     # (M, 4)
              'box_class': np.concatenate([k[3] for k in kept] + [np.zeros(0, np.int16)]),
              'box_colour': np.concatenate([k[4] for k in kept] + [np.zeros(0, np.int8)]),
              'box_offsets': np.asarray(box_offsets, dtype=np.int64),
              'questions': enc[template.astype(np.int64)].reshape(-1, cfg['max_q_len']),     # (Q, T)
              'answers': np.asarray(answer, dtype=np.int16), 'template': template,
              'family': np.asarray([FAMILIES.index(TEMPLATES[t][0]) for t in template], dtype=np.uint8),
              'image_idx': np.asarray(image, dtype=np.int32),
              'q_offsets': np.asarray(q_offsets, dtype=np.int64),
              'referents': np.concatenate([*refs, np.zeros(0, dtype=np.int64)]).astype(np.int32),
              'ref_offsets': np.cumsum([0] + [len(r) for r in refs]).astype(np.int64)}
    for k, arr in arrays.items():
        np.save(os.path.join(tmp, f'{split}_{k}.npy'), arr)
    with open(os.path.join(tmp, f'{split}_names.json'), 'w') as fh:
        json.dump([k[0] for k in kept], fh)
    return arrays


def summarize(arrays):
    """-> counts, answer_dist, blind_majority_acc (majority answer per template, learned on train)."""
    tr = arrays['train']
    majority = {t: np.bincount(tr['answers'][tr['template'] == t], minlength=len(ANSWERS)).argmax()
                for t in range(len(TEMPLATES))}
    counts, dist, blind = {}, {}, {}
    for s, a in arrays.items():
        fam = a['family']
        counts[s] = {'images': len(a['box_offsets']) - 1, 'questions': len(a['answers']), 'boxes': len(a['boxes']),
                     'per_family': {f: int((fam == i).sum()) for i, f in enumerate(FAMILIES)}}
        dist[s] = {f: {ANSWERS[k]: int(n) for k, n in enumerate(np.bincount(a['answers'][fam == i],
                                                                            minlength=len(ANSWERS))) if n}
                   for i, f in enumerate(FAMILIES)}
        guess = np.asarray([majority[t] for t in a['template']], dtype=np.int64)
        blind[s] = float((guess == a['answers']).mean()) if len(guess) else 0.0
    return counts, dist, blind


def build(cfg, root, name, source):
    """Ingest the BDD tree at root into data/<name>/ (or cfg['out']); -> the folder."""
    final = cfg['out'] or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', name)
    args = {k: cfg[k] for k in config_keys if k not in ('out', 'force', 'workers')}
    if os.path.exists(os.path.join(final, 'meta.json')) and not cfg['force']:
        meta = read_json(os.path.join(final, 'meta.json'))
        if meta.get('args') == args and meta.get('generator_version') == VERSION:
            print(f"{final} is complete and was made with the same arguments: reusing it (--force=True rebuilds)")
            return final
    for stale in glob.glob(f'{final}.tmp-*'):            # left by a killed run; never a valid dataset
        shutil.rmtree(stale, ignore_errors=True)
    tmp = f'{final}.tmp-{os.getpid()}'
    os.makedirs(tmp)
    try:
        with make_pool(cfg['workers']) as pool:
            skipped = {}
            fmt, splits = load_frames(root, cfg, skipped)
            tok = Tokenizer.build([q for _, q in TEMPLATES])
            assert len(tok) < 2 ** 16 and max(len(Tokenizer.split(q)) for _, q in TEMPLATES) + 2 <= cfg['max_q_len'], \
                f"questions do not fit max_q_len={cfg['max_q_len']}"
            stats = np.zeros((3, 3))                      # sum, sum of squares, pixel count per channel
            arrays = {s: write_split(tmp, s, splits[s], cfg, pool, skipped, tok, stats if s == 'train' else None)
                      for s in ('train', 'val', 'test')}
        mean = stats[0] / np.maximum(stats[2], 1)
        std = np.sqrt(np.maximum(stats[1] / np.maximum(stats[2], 1) - mean ** 2, 0))
        counts, dist, blind = summarize(arrays)
        meta = {'format_version': FORMAT_VERSION, 'generator_version': VERSION, 'source': source, 'source_format': fmt,
                'tokenizer': tok.to_dict(), 'max_q_len': cfg['max_q_len'], 'answers': ANSWERS, 'families': FAMILIES,
                'templates': [q for _, q in TEMPLATES], 'template_family': [f for f, _ in TEMPLATES],
                'box_classes': BOX_CLASSES, 'img_h': cfg['img_h'], 'img_w': cfg['img_w'],
                'mean': mean.round(4).tolist(), 'std': std.round(4).tolist(), 'counts': counts, 'answer_dist': dist,
                'blind_majority_acc': blind, 'filters': {k: cfg[k] for k in ('weather', 'timeofday', 'max_images')},
                'skipped': dict(sorted(skipped.items())), 'seed': cfg['seed'], 'args': args,
                'rules': {'horizon': HORIZON, 'slope': SLOPE, 'visible': VISIBLE, 'tiny': TINY, 'close': CLOSE,
                          'far': FAR, 'light_visible': LIGHT_VISIBLE, 'light_tiny': LIGHT_TINY, 'lane_margin': LANE_MARGIN}}
        with open(os.path.join(tmp, 'meta.json'), 'w') as fh:
            json.dump(meta, fh, indent=1)                 # last: a folder without meta.json is never accepted
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(final, meta)
    return final


def make_pool(n):
    """A process pool, or for n <= 1 one worker thread in this process (tests, debugging)."""
    return Pool(n) if n > 1 else ThreadPool(1)


def report(final, meta):
    print(f"wrote {final}  ({meta['img_h']}x{meta['img_w']}, source {meta['source']} {meta['source_format']})")
    for s, c in meta['counts'].items():
        print(f"  {s:5s}: {c['images']:6d} images {c['questions']:6d} questions {c['boxes']:7d} boxes | "
              + ' '.join(f"{f} {n}" for f, n in c['per_family'].items()))
    for f, d in meta['answer_dist']['train'].items():
        print(f"  train {f:8s} " + ', '.join(f"{a}: {n}" for a, n in d.items()))
    print("  question-only majority accuracy: " + ', '.join(f"{s} {a:.3f}" for s, a in meta['blind_majority_acc'].items()))
    if meta['skipped']:
        print("  skipped: " + ', '.join(f"{r}: {n}" for r, n in meta['skipped'].items()))


def run(cfg):
    t0 = time.time()
    if cfg['bdd_root']:
        if not os.path.isdir(cfg['bdd_root']):
            sys.exit(f"--bdd_root={cfg['bdd_root']} is not a folder; point it at the BDD100K root (images/, labels/)")
        final = build(cfg, cfg['bdd_root'], 'bdd100k', 'bdd100k')
    else:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'synthetic_bdd')
        with make_pool(cfg['workers']) as pool:
            render_tree(root, cfg, pool)
        final = build(cfg, root, 'synthetic', 'synthetic')
    print(f"done in {time.time() - t0:.1f}s: {final}")
    return final


# -----------------------------------------------------------------------------
# Reading a prepared dataset: train.py, eval.py, viz.py and bench.py all come through here

SPLIT_ARRAYS = ('images', 'boxes', 'box_class', 'box_colour', 'box_offsets', 'questions', 'answers', 'family',
                'template', 'image_idx', 'q_offsets', 'referents', 'ref_offsets')


def load_meta(data_dir):
    """The dataset's meta.json; a clear error when prepare.py has not (completely) run."""
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.exists(path):
        sys.exit(f"no prepared dataset at {data_dir} (no meta.json) ---> HINT: run `python prepare.py` first")
    with open(path) as f:
        meta = json.load(f)
    if meta.get('format_version') != FORMAT_VERSION:
        sys.exit(f"{data_dir} was written by another prepare.py (format {meta.get('format_version')}, "
                 f"expected {FORMAT_VERSION}) ---> HINT: re-run `python prepare.py --force=True`")
    return meta


def open_split(data_dir, split):
    """{name: read-only memmap} for one split; nothing is read into RAM until indexed."""
    return {name: np.load(os.path.join(data_dir, f'{split}_{name}.npy'), mmap_mode='r') for name in SPLIT_ARRAYS}


def sample_batch(arrays, n_images, questions_per_image, generator):
    """A random training batch: n_images images, then questions_per_image of each image's questions (with
    replacement, so an image with fewer questions still fills its share). All numpy: images uint8
    (n_images, H, W, 3), questions int64 (B, T) cut to the longest question, answers (B,), image_idx (B,),
    and the images' rows in the split (n_images,), for patch_labels."""
    counts = np.diff(arrays['q_offsets'])                                      # (N,) questions per image
    has_q = np.flatnonzero(counts)
    pick = np.sort(has_q[torch.randint(len(has_q), (n_images,), generator=generator).numpy()])  # file order reads
    offset = torch.rand(n_images, questions_per_image, generator=generator).numpy() * counts[pick, None]
    rows = (arrays['q_offsets'][pick, None] + offset.astype(np.int64)).ravel()  # (B,) question rows
    q = arrays['questions'][rows].astype(np.int64)                             # (B, T)
    q = q[:, :int((q != 0).sum(1).max())]                                      # drop the columns of pure padding
    return arrays['images'][pick], q, arrays['answers'][rows].astype(np.int64), \
        np.repeat(np.arange(n_images), questions_per_image), pick


def patch_labels(arrays, rows, patch):
    """Which of PATCH_LABELS touch each patch of the images at `rows`: float32 (n, H/p, W/p, K) of 0/1,
    the targets of the model's auxiliary patch head. Boxes cover every patch they overlap, tiny ones too."""
    H, W = arrays['images'].shape[1:3]
    out = np.zeros((len(rows), H // patch, W // patch, len(PATCH_LABELS)), np.float32)
    for i, r in enumerate(rows):
        lo, hi = arrays['box_offsets'][r], arrays['box_offsets'][r + 1]
        cells = arrays['boxes'][lo:hi] / patch                                 # (M, 4) in patch units
        x0, y0 = np.floor(cells[:, :2]).astype(np.int64).T
        x1, y1 = np.ceil(cells[:, 2:]).astype(np.int64).T
        for j, (cls, colour) in enumerate(zip(arrays['box_class'][lo:hi], arrays['box_colour'][lo:hi])):
            out[i, y0[j]:y1[j], x0[j]:x1[j], cls] = 1
            if colour > 0:  # a lit traffic light also marks its colour's channel
                out[i, y0[j]:y1[j], x0[j]:x1[j], len(BOX_CLASSES) + colour - 1] = 1
    return out


def split_batches(arrays, max_questions, max_images=None):
    """Every question of a split in file order, whole images at a time, about max_questions per batch. Yields
    (q_lo, q_hi, images (n, H, W, 3), questions int64 (q_hi - q_lo, T'), image_idx int64 into the n images)."""
    q_off = arrays['q_offsets']
    n_img = len(q_off) - 1 if max_images is None else min(max_images, len(q_off) - 1)
    lo = 0
    while lo < n_img:
        hi = int(np.searchsorted(q_off, q_off[lo] + max_questions, side='right')) - 1
        hi = min(n_img, max(hi, lo + 1))                                       # at least one image per batch
        q_lo, q_hi = int(q_off[lo]), int(q_off[hi])
        q = arrays['questions'][q_lo:q_hi].astype(np.int64)                    # (Q, T)
        yield (q_lo, q_hi, arrays['images'][lo:hi], q[:, :int((q != 0).sum(1).max())],
               arrays['image_idx'][q_lo:q_hi].astype(np.int64) - lo)
        lo = hi


def mirror_tables(tokenizer, answers):
    """Token and answer permutations that swap 'left' and 'right' (identity elsewhere). The question rules are
    symmetric about the image's vertical midline, so a mirrored image with these swaps applied to its question
    and answer is another correct example (train.py's hflip; eval.py's consistency check)."""
    tok, ans = np.arange(len(tokenizer)), np.arange(len(answers))
    for a, b in (('left', 'right'), ('right', 'left')):
        if a in tokenizer.stoi and b in tokenizer.stoi:
            tok[tokenizer.stoi[a]] = tokenizer.stoi[b]
        if a in answers and b in answers:
            ans[answers.index(a)] = answers.index(b)
    return tok, ans


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    try:
        run({k: globals()[k] for k in config_keys})
    except LabelError as e:
        sys.exit(f"error: {e}")
