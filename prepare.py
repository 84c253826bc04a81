"""
Prepare tvlm's dataset: labelled dash-cam images -> (image, question, answer) memmaps in data/<name>/,
so training never decodes a JPEG.

    python prepare.py                                  # render the embedded synthetic world, then prepare it
    python prepare.py --bdd_root=/data/bdd100k         # real BDD100K (2018, legacy per-image or det_20 labels)
    python prepare.py --bdd_root=/data/bdd100k --max_images=5000 --weather=clear --timeofday=daytime \
                      --img_h=144 --img_w=256 --out=data/bdd_clear --seed=1337 --workers=2 --force=True

The default renders a BDD100K tree (JPEGs + 2018 labels, world.py) into data/synthetic_bdd/ and then runs the
very same BDD ingestion on it, so the default proves the real path. Splits: test = BDD's val; val = the ~5% of BDD's
train whose crc32(name) % 100 < 5; train = the rest. The on-disk format (data/<name>/) is in the README, "What is on disk".

Question rules (one set for every source; H and W are the stored image height and width)
  Box coordinates are scaled to the stored image. An object's footprint is the bottom centre of its box.
  There is no horizon label in BDD100K, so every image is read with the same camera: the vanishing point is
  at (W/2, 0.45 H), and the ego lane is the corridor whose edges run from the vanishing point down with
  slope 1.25 (x moves 1.25 px per px below the horizon). An object's lane position is
  u = (x - W/2) / (1.25 * (y - 0.45 H)) at its footprint (x, y): ego lane |u| < 1, left lane -3 < u < -1,
  right lane 1 < u < 3, left side u < -1, right side u > 1.
  Visible: box height >= 0.08 H (traffic lights: >= 0.06 H); tiny, and ignored: < 0.04 H (lights < 0.03 H).
  A car, truck or bus that the frame's left or right edge cuts is judged by the smaller of its box's height and
  width: a strip of a vehicle at the edge is as hard to see as a small one.
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
  - out of scope "What color is the car?", "Is the driver tired?", ...: always "can't answer"; asked on a third
           of the val and test images, beside the others (train: train_per_family thirds, the same share).
  Each image gets at most one question per family (a train image up to train_per_family, from different
  templates), from the template of that family asked least so far; within a template no answer may run ahead of
  its share (yes/no: half), so a question-only model stays near chance. Each question is asked in one of its
  template's PHRASINGS (python prepare.py --list_questions=True); the fifth of each template's 6-8 is held out of
  training and asked, beside a seen one, on val and test.
"""
import glob
import io
import json
import os
import re
import shutil
import sys
import time
import zlib
from dataclasses import fields
from multiprocessing import Pool
from multiprocessing.pool import ThreadPool

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tvlm import CANT, TVLMConfig, Tokenizer, answer_targets, load_image, orientation

# -----------------------------------------------------------------------------
# defaults, overridable as --key=value (configurator.py)

bdd_root = ''             # '' renders and prepares the embedded synthetic world
out = ''                  # '' -> data/synthetic or data/bdd100k next to this file (the rendered world's own BDD
                          # tree goes beside it: data/synthetic_bdd, or <out>_bdd)
max_images = 0            # >0: at most this many images from each of BDD's train and val
weather = ''              # keep only frames with this weather attribute, e.g. 'clear' ('' keeps all)
timeofday = ''            # keep only frames with this time of day, e.g. 'daytime'
img_h = 144
img_w = 256
max_q_len = 16            # question tokens incl. <bos> and <eos>
max_answer_len = 16       # 'answer : reason' tokens incl. the closing <eos> (the generative mode's target)
seed = 1337
workers = 2
force = False
synth_train = 6300        # synthetic frames rendered into BDD's train (~5% of them become our val)
synth_val = 500           # synthetic frames rendered into BDD's val (our test)
list_questions = False    # True: print every phrasing, grouped by template, the held-out ones marked, and exit
train_per_family = 3      # questions per family on a train image (val and test: 1); more per image, more per ViT pass

VERSION = 'prepare-10'         # bump when the rules change: the world is re-rendered and every dataset rebuilt
FORMAT_VERSION = 5            # bump when the files' layout changes; readers refuse other versions
VAL_PERCENT = 5
ANSWERS = ['yes', 'no', '0', '1', '2', '3', '4', '5', 'more than 5', 'red', 'yellow', 'green', CANT]  # first words differ:
assert len({a.split()[0] for a in ANSWERS}) == len(ANSWERS), "eval and generate mode read answers by their first word"
FAMILIES = ['exist', 'count', 'spatial', 'light', 'safety', 'scene', 'out of scope']
BOX_CLASSES = ['pedestrian', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
               'traffic light', 'traffic sign']  # det_20 order (bdd100k configs/det.toml)
CATEGORY_MAP = {**{c: c for c in BOX_CLASSES}, 'person': 'pedestrian', 'bike': 'bicycle', 'motor': 'motorcycle',  # 2018
                'other person': 'pedestrian', 'other vehicle': 'car', 'trailer': 'truck',    # det_20's ignored classes
                'caravan': 'car', 'van': 'car'}
COLOURS = ['none', 'red', 'yellow', 'green']
# what the model's patch head predicts: each box's class and a lit light's colour on the patches it touches, and
# rain on every patch of a rainy frame (streaks, drops on the glass, a wet road: the ViT learns to see it there, which
# "Is it raining?", one question in a dozen, never taught it; without it the model called every dark frame rainy).
# A frame label covers every patch, so it weighs a quarter: at full weight (one run) it crowded out the rest, test
# 0.847 and lights 0.797 against 0.855 and 0.868; a tenth (two seeds) was no better on the real frames we have
PATCH_LABELS = BOX_CLASSES + [f'{c} light' for c in COLOURS[1:]] + ['rain']
PATCH_LABEL_WEIGHTS = tuple(0.25 if label == 'rain' else 1.0 for label in PATCH_LABELS)
COLOUR_MAP = {**{c: c for c in COLOURS}, 'r': 'red', 'y': 'yellow', 'g': 'green', 'na': 'none'}  # det_20: R/Y/G/NA

# -----------------------------------------------------------------------------
# question rules: the plain words are in the docstring above; the numbers are here, once (world.py imports
# them to keep its objects out of the unsure bands)

HORIZON, SLOPE = 0.45, 1.25            # vanishing point (W/2, 0.45 H); ego-lane edge slope (px per px)
VISIBLE, TINY = 0.08, 0.04             # box height / H (an edge-cut vehicle's: the smaller of height and width)
EDGE = 0.005                           # a box within this share of W of the left or right edge is cut by it
LIGHT_VISIBLE, LIGHT_TINY = 0.06, 0.03
CLOSE, FAR = 0.59, 0.55                # footprint y / H
LANE_MARGIN = 0.2                      # in lane units u
NO, MAYBE, YES = 0, 1, 2               # three-valued logic: AND is min, OR is max
ROAD_USERS = [BOX_CLASSES.index(c) for c in BOX_CLASSES[:8]]
WIDE = np.isin(BOX_CLASSES, ['car', 'truck', 'bus'])   # by class id: the classes the edge can leave a strip of
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
             ('scene', 'Is it night?'), ('scene', 'Is it raining?'),
             ('out of scope', 'What color is the car?')]   # no rule in candidates(): prepare asks it, always CANT
OUT_OF_SCOPE = len(TEMPLATES) - 1
RAINING = {'rainy': 'yes', 'clear': 'no', 'partly cloudy': 'no', 'overcast': 'no', 'foggy': 'no'}  # by BDD's weather;
                                                                        # snowy and undefined: not asked
EXIST_CLASS = {'Is there a pedestrian?': 'pedestrian', 'Is there a car?': 'car', 'Are there any trucks?': 'truck',
               'Is there a bus?': 'bus', 'Is there a cyclist?': 'rider', 'Is there a traffic sign?': 'traffic sign'}
MAX_SHARE = {'What color is the traffic light?': 0.45, 'How many cars are close?': 0.3,   # of a template's
             'How many pedestrians are close?': 0.3}     # questions one answer may take; yes/no: 0.5
SLACK = 3                                   # ...plus this many, so the first images are not starved
OOS_SHARE = 1 / 3                           # of the images also get an out-of-scope question (beside one per family;
                                            # x per_family on train, so its share of the questions stays the same)

# Questions as people ask them: each template's phrasings, asked in its place with its answer (the rules stay in
# candidates()). Every 5th phrasing of a list (the 5th, 10th, ...) is held out of training: val and test ask each
# question twice, in a seen and in a held-out phrasing. Held-out words all occur in seen phrasings, so the held-out
# ones test new wordings, not new words. Sides and colours share one list, so a mirrored question stays a phrasing.
SIDE = {'lane': ['Is the {s} lane clear?', 'Is the {s} lane free?', 'Is the {s} lane empty?', 'Is the lane on the {s} clear?',
                 'Is the lane on the {s} free?', 'Is the {s} hand lane clear?', 'Is the lane to my {s} empty?'],
        'car': ['Is there a car on the {s}?', 'Is there a car to my {s}?', 'Are there cars on the {s}?',
                'Any cars on the {s}?', 'Is a car on my {s}?', 'Is there a car on the {s} side?', 'Do you see a car on the {s}?'],
        'turn': ['Can I safely turn {s}?', 'Can I turn {s}?', 'Is it safe to turn {s}?', 'Am I clear to turn {s}?',
                 'Is it OK to turn {s} here?', 'Can I turn {s} now?', 'Is it ok to turn {s}?'],
        'light': ['Is the light {s}?', 'Is the traffic light {s}?', 'Is the signal {s}?', 'Is it a {s} light?',
                  'Is the traffic signal {s}?', 'Is the light on {s}?', 'Is the light showing {s}?']}
PHRASINGS = {
    'Is there a pedestrian?': ['Is there a pedestrian?', 'Is there a person?', 'Are there any pedestrians?',
                               'Are there people?', 'Is anyone walking?', 'Do you see a pedestrian?', 'Is anyone on foot?',
                               'Is someone walking?'],
    'Is there a car?': ['Is there a car?', 'Are there any cars?', 'Do you see a car?', 'Any cars around?',
                        'Is a car visible?', 'Can you see a car?'],
    'Are there any trucks?': ['Are there any trucks?', 'Is there a truck?', 'Is there a lorry?', 'Any trucks around?',
                              'Do you see a lorry?', 'Is a truck visible?'],
    'Is there a bus?': ['Is there a bus?', 'Are there any buses?', 'Any buses around?', 'Do you see a bus?',
                        'Can you see a bus?', 'Is a bus visible?'],
    'Is there a cyclist?': ['Is there a cyclist?', 'Is there a rider?', 'Is anyone riding a bike?', 'Are there any cyclists?',
                            'Is there a person on a bike?', 'Do you see a cyclist?', 'Is someone on a bicycle?'],
    'Is there a traffic sign?': ['Is there a traffic sign?', 'Is there a sign?', 'Are there any road signs?',
                                 'Do you see a traffic sign?', 'Any signs around?', 'Is a sign visible?'],
    'How many cars are close?': ['How many cars are close?', 'How many cars are near?', 'How many cars are nearby?',
                                 'How many cars are close to me?', 'How many cars are near me?',
                                 'Count the cars close to me.', 'How many close cars are there?'],
    'How many pedestrians are close?': ['How many pedestrians are close?', 'How many people are close?',
                                        'How many pedestrians are near?', 'How many people are nearby?',
                                        'How many pedestrians are close to me?', 'Count the people close to me.',
                                        'How many close pedestrians are there?'],
    **{f'Is the {s} lane clear?': [p.format(s=s) for p in SIDE['lane']] for s in ('left', 'right')},
    'Is the road ahead clear?': ['Is the road ahead clear?', 'Is the road ahead free?', 'Is the way ahead clear?',
                                 'Is my lane clear?', 'Is the lane ahead empty?', 'Is the road in front of me clear?',
                                 'Is the road ahead empty?'],
    **{f'Is there a car on the {s}?': [p.format(s=s) for p in SIDE['car']] for s in ('left', 'right')},
    'What color is the traffic light?': ['What color is the traffic light?', 'What color is the light?',
                                         'What colour is the traffic light?', 'What color is the signal?',
                                         'What colour is the light?', 'Which color is the traffic signal?',
                                         'What is the light showing?'],
    **{f'Is the light {c}?': [p.format(s=c) for p in SIDE['light']] for c in ('red', 'green')},
    **{f'Can I safely turn {s}?': [p.format(s=s) for p in SIDE['turn']] for s in ('left', 'right')},
    'Is it safe to go straight?': ['Is it safe to go straight?', 'Can I go straight?', 'Can I drive straight on?',
                                   'Is it safe to keep going?', 'Am I clear to go straight?', 'Can I go straight here?',
                                   'Is it ok to continue straight?'],
    'Should I stop?': ['Should I stop?', 'Do I have to stop?', 'Do I need to stop?', 'Must I stop?', 'Should I stop here?',
                       'Do I need to brake?', 'Should I stop now?'],
    'Is it night?': ['Is it night?', 'Is it dark?', 'Is it night time?', 'Is it dark outside?', 'Is it night time now?',
                     'Are we driving at night?', 'Is it dark now?'],
    'Is it raining?': ['Is it raining?', 'Is the weather rainy?', 'Is there rain?', 'Is it raining outside?', 'Is it rainy?',
                       'Are we driving in the rain?', 'Is rain falling?'],
    # out of scope: questions about the road's words that no rule answers, and words of their own. Many, and
    # near the in-scope forms ("Is the truck red?" beside "Is the light red?"), so that what the model learns to
    # abstain on is "no template asks this", not a handful of sentences
    'What color is the car?': ['What color is the car?', 'Is the driver tired?', 'How fast is the bus going?',
                               'Where is the driver going?', 'What color is the truck?', 'Is the car expensive?',
                               'How old is the driver?', 'Is the bus full?', 'How fast is the car going?',
                               'Is the truck expensive?', 'Who is driving the truck?', 'Is the pedestrian tired?',
                               'What is the driver thinking?', 'Where is the bus going?', 'What time is it?',
                               'What color is the bus?', 'Is the truck red?', 'Is the car green?',
                               'How many people are in the bus?', 'What color is the bike?', 'Who is in the car?',
                               'What does the sign say?', 'Is the bus late?', 'What is the truck carrying?',
                               'Where is the cyclist going?', 'How big is the truck?', 'Is the car new?',
                               'What day is it?', 'Why is the car stopping?', 'Is the bus new?',
                               'When will the light change?', 'How much does the car cost?', 'What is the weather like?',
                               'Is the driver old?', 'Who is driving the car?', 'Where are we?', 'What city is this?',
                               'How many people are in the car?', 'Is the truck parked?', 'What is the car carrying?']}
# test only: words no training question or reason uses, so the tokenizer reads them as <unk> (by design)
NEW_WORD_QUESTIONS = ['Is it snowing?', 'What brand is the truck?', 'Is the pedestrian happy?', 'Is the road wet?',
                      'What model is the car?', 'Is the cyclist wearing a helmet?']
# every question a split can hold: (template id, text, held out of training, has words unknown to the tokenizer)
PHRASES = [(t, p, i % 5 == 4, False) for t, (_, q) in enumerate(TEMPLATES) for i, p in enumerate(PHRASINGS[q])] + \
          [(OUT_OF_SCOPE, p, True, True) for p in NEW_WORD_QUESTIONS]
PHRASE_IDS = {key: [k for k, (t, _, h, n) in enumerate(PHRASES) if (t, h, n) == key]   # (template, held out, new
              for key in {(t, h, n) for t, _, h, n in PHRASES}}                          # words) -> ids, for ask()


def tri(v, lo, hi):
    """v >= hi -> YES, v < lo -> NO, else MAYBE (elementwise)."""
    return np.where(v >= hi, YES, np.where(v < lo, NO, MAYBE)).astype(np.int8)


def between(u, a, b):
    """Is lane position u inside (a, b)? MAYBE within LANE_MARGIN of an edge."""
    inside = (u > a + LANE_MARGIN) & (u < b - LANE_MARGIN)
    outside = (u < a - LANE_MARGIN) | (u > b + LANE_MARGIN)
    return np.where(inside, YES, np.where(outside, NO, MAYBE)).astype(np.int8)


def lane_position(boxes, H, W):
    """u, each box's footprint in lane units: |u| < 1 is the ego lane, u < -1 left of it, u > 1 right of it."""
    x, y = (boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]
    return (x - W / 2) / (SLOPE * np.maximum(y - HORIZON * H, 1e-3))   # above the horizon: huge |u|, never close


def side_of(boxes, H, W):
    """Where a reason places each box float[M, 4]: 'ahead' (in the ego lane), 'on the left' or 'on the right'."""
    u = lane_position(boxes, H, W)
    return np.where(abs(u) < 1, 'ahead', np.where(u < 0, 'on the left', 'on the right'))


def seen_size(boxes, cls, W):
    """The size the visibility rule reads, float[M] in the boxes' pixels: the box's height, or for a car, truck or bus
    cut by the frame's left or right edge the smaller of height and width. Before this rule, 36 of the world's 504 test
    car counts hung on a strip of a car a few pixels wide at the edge, counted whole; the model got 14% of them right."""
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    cut = WIDE[cls] & ((boxes[:, 0] <= EDGE * W) | (boxes[:, 2] >= (1 - EDGE) * W))   # a lookup: cheap per object
    return np.where(cut, np.minimum(h, w), h)


def object_facts(boxes, cls, H, W):
    """Three-valued facts about each box; boxes float[M, 4] x1,y1,x2,y2 in stored pixels."""
    y, h, u = boxes[:, 3], boxes[:, 3] - boxes[:, 1], lane_position(boxes, H, W)   # footprint y, height, lane
    visible = tri(seen_size(boxes, cls, W), TINY * H, VISIBLE * H)
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
    ans['Should I stop?'] = (stop, blocked['ego'][1] if light == 'yellow' else straight[1])   # yellow: the road decides
    ans['Is it night?'] = ({'night': 'yes', 'daytime': 'no'}.get(attrs.get('timeofday')), [])
    ans['Is it raining?'] = (RAINING.get(attrs.get('weather')), [])
    return [(t, ans[q][0], np.asarray(ans[q][1], dtype=np.int64)) for t, (_, q) in enumerate(TEMPLATES)
            if ans.get(q, (None,))[0] is not None]


# Reasons: the facts that decided an answer, in words, for the generative mode ("yes: a car is close on the right").
# Two phrasings each, so the model learns the facts rather than one sentence; {what} is a box class, {where} a side.
REASONS = {'object': ['a {what} is {state} {where}', 'there is a {what} {state} {where}'],
           'absent': ['no {what} is {state}', 'there is no {what} {state}'],
           'clear': ['nothing is close {where}', 'the way is clear {where}'],
           'light': ['the light is {colour}', 'the signal is {colour}'],
           'go': ['the light is {colour} and nothing is close {where}', 'it is {colour} and the way is clear {where}'],
           'go_unlit': ['no light, and nothing is close {where}', 'no signal, and the way is clear {where}'],
           'night': ['it is dark', 'it is night time'], 'day': ['it is daytime', 'it is light out'],
           'rain': ['it is raining', 'rain is falling'], 'dry': ['the weather is {weather}', 'it is {weather}, not rainy'],
           'scope': ['the question is not about the road', 'that is not a question about the road']}
WHERE = {'Is the left lane clear?': 'in the left lane', 'Is the right lane clear?': 'in the right lane',
         'Is the road ahead clear?': 'ahead', 'Is there a car on the left?': 'on the left',
         'Is there a car on the right?': 'on the right', 'Can I safely turn left?': 'on the left',
         'Can I safely turn right?': 'on the right', 'Is it safe to go straight?': 'ahead', 'Should I stop?': 'ahead'}
WEATHERS = [w for w, a in RAINING.items() if a == 'no']       # the weathers that answer "Is it raining?" with no


def reason(question, answer, refs, boxes, cls, colour, attrs, H, W, variant):
    """Why the rules gave `answer` to `question` on one image: a light's colour, the biggest (nearest) referent and
    its side, or what is absent or clear. refs: the image's referent rows; variant 0 or 1 picks the phrasing."""
    fam, pick = dict((q, f) for f, q in TEMPLATES)[question], lambda kind, **kw: REASONS[kind][variant].format(**kw)
    if fam == 'out of scope':
        return pick('scope')
    lights = [r for r in refs if BOX_CLASSES[cls[r]] == 'traffic light']
    goes = (fam == 'safety') and answer == ('no' if question == 'Should I stop?' else 'yes')
    if goes:  # the way is clear, and the light (if any) allows it
        where = WHERE[question]
        return pick('go', colour=COLOURS[colour[lights[0]]], where=where) if lights else pick('go_unlit', where=where)
    if lights:
        return pick('light', colour=COLOURS[colour[lights[0]]])
    if len(refs):  # an object decided it: name the nearest, with the side of its footprint
        r = refs[np.argmax(boxes[refs, 3] - boxes[refs, 1])]
        return pick('object', what=BOX_CLASSES[cls[r]], state='visible' if fam == 'exist' else 'close',
                    where=side_of(boxes[r:r + 1], H, W)[0])
    if fam == 'scene':
        if question == 'Is it night?':
            return pick('night' if answer == 'yes' else 'day')
        return pick('rain') if answer == 'yes' else pick('dry', weather=attrs['weather'])
    if fam == 'exist':
        return pick('absent', what=EXIST_CLASS[question], state='visible')
    if fam == 'count':
        return pick('absent', what='car' if 'cars' in question else 'pedestrian', state='close')
    if question in ('Is there a car on the left?', 'Is there a car on the right?'):
        return pick('absent', what='car', state='close ' + WHERE[question])
    return pick('clear', where=WHERE[question])


def written_answer(answer, reason):
    """What the generative mode learns to write after a question (tvlm's answer() and eval.py split it at ':')."""
    return f"{answer} : {reason}"


def reason_corpus():
    """Every word a reason can use, for the tokenizer: the phrasings with their slots filled by every value."""
    slots = [*BOX_CLASSES, 'visible', 'close', *WHERE.values(), *COLOURS[1:], *WEATHERS]
    return [re.sub(r'\{\w+\}', ' ', p) for ps in REASONS.values() for p in ps] + slots


def choose_questions(cands, counts, rng, per_family=1):
    """Up to per_family questions per family, each from the family's template asked least so far among those not yet
    picked here whose answer has not run ahead of its share of that template. counts: int[templates, answers],
    updated in place."""
    picked = []
    for fam in FAMILIES:
        for _ in range(per_family):
            opts = [(counts[t].sum(), t, ANSWERS.index(a), rows) for t, a, rows in cands
                    if TEMPLATES[t][0] == fam and t not in {p[0] for p in picked}
                    and counts[t, ANSWERS.index(a)] <= MAX_SHARE.get(TEMPLATES[t][1], 0.5) * counts[t].sum() + SLACK]
            if not opts:
                break
            low = [o for o in opts if o[0] == min(o[0] for o in opts)]
            _, t, ai, rows = low[rng.integers(len(low))]
            counts[t, ai] += 1
            picked.append((t, ai, rows))
    return picked


def ask(t, split, rng):
    """Phrasings (ids into PHRASES) to ask template t in: a seen one; on val and test also a held-out one (the same
    question twice on the same image, so seen and unseen wordings compare fairly); out of scope on test, also one
    with new words."""
    kinds = [(False, False)] + [(True, False)] * (split != 'train') + [(True, True)] * (split == 'test' and t == OUT_OF_SCOPE)
    return [int(rng.choice(PHRASE_IDS[(t, *kind)])) for kind in kinds]


def print_questions():
    """--list_questions=True: every phrasing under its template and family, held-out ones marked."""
    for t, (fam, q) in enumerate(TEMPLATES):
        print(f"{fam}: {q}")
        for _, p, held, new in (x for x in PHRASES if x[0] == t):
            print(f"    {'new words' if new else 'held out' if held else '':9s} {p}")
    held = [h for _, _, h, n in PHRASES if not n]
    print(f"{len(held)} phrasings of {len(TEMPLATES)} templates, {sum(held)} held out of training; "
          f"{len(NEW_WORD_QUESTIONS)} test-only questions with new words")

# -----------------------------------------------------------------------------
# BDD100K ingestion: 2018 aggregated, legacy per-image and 2020 det_20 labels (../shared/BDD100K_FORMAT.md)

class LabelError(ValueError):
    """Labels that cannot be read, or give no usable frame; the message names the file and what is wrong."""


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
    found = {fmt: {s: [p for p in paths(s) if os.path.isfile(p)] for s in ('train', 'val')} for fmt, paths in layouts}
    present = [fmt for fmt in found if any(found[fmt].values())]
    if not present:
        raise LabelError(f"{root}: no BDD100K labels found; expected labels/det_20/det_{{train,val}}.json, "
                         f"labels/bdd100k_labels_images_{{train,val}}.json or labels/100k/{{train,val}}/<name>.json")
    # BDD ships each format as its own download, so a tree may hold several: the first with both splits, else the first
    fmt = next((f for f in present if all(found[f].values())), present[0])
    return fmt, {s: [(p, fr) for p in ps for fr in frames_of(read_json(p), p)] for s, ps in found[fmt].items()}


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
        lab_attrs = lab.get('attributes') or {}
        if not isinstance(lab_attrs, dict):
            raise LabelError(f"{path}: frame {name}: a label's 'attributes' must be a dict, got {str(lab_attrs)[:40]}")
        colour = lab_attrs.get('trafficLightColor', 'none') if cat == 'traffic light' else 'none'
        colour = colour[-1] if isinstance(colour, list) and colour else colour   # the toolkit's tests write [1, "G"]
        colour = COLOUR_MAP.get(str(colour).lower(), 'none')
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
        with Image.open(path) as im:   # boxes are drawn on the frame as shown, which load_image turns to
            size = im.size[::-1] if orientation(im) >= 5 else im.size
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


def fresh_tmp(final):
    """An empty f'{final}.tmp-<pid>' folder to write a tree in before replace_dir, once what killed runs left
    beside final is gone (their .tmp- and .old- folders: never a valid tree, and up to hundreds of MB)."""
    for stale in glob.glob(f'{final}.tmp-*') + glob.glob(f'{final}.old-*'):
        shutil.rmtree(stale, ignore_errors=True)
    return make_dir(f'{final}.tmp-{os.getpid()}')


def make_dir(path, flag='--out'):
    """-> path, a folder now, or exit in one line that names the flag (a file of that name, no permission)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        sys.exit(f"{flag}={path} cannot be made a folder ({e.strerror}) ---> HINT: name a folder you can write")
    return path


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
            stats += np.stack([px.sum(0), (px ** 2).sum(0), np.full(3, len(px))])          # (3, 3)
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
    """All of one split's files; -> ({name: array} as written, {attribute: {value: frames}})."""
    kept = decode_split(os.path.join(tmp, f'{split}_images.npy'), items, cfg, pool, skipped, stats)
    counts = np.zeros((len(TEMPLATES), len(ANSWERS)), dtype=np.int64)
    qs, box_offsets, q_offsets = [], [0], [0]  # qs: (template, answer, image, split-global box rows, text, phrasing)
    H, W, R = cfg['img_h'], cfg['img_w'], cfg['max_answer_len']
    for i, (name, attrs, boxes, cls, colour) in enumerate(kept):
        rng = np.random.default_rng([cfg['seed'], zlib.crc32(name.encode())])
        per_family = cfg['train_per_family'] if split == 'train' else 1
        chosen = choose_questions(candidates(boxes, cls, colour, attrs, H, W), counts, rng, per_family)
        if rng.random() < OOS_SHARE * per_family:
            chosen.append((OUT_OF_SCOPE, ANSWERS.index(CANT), np.zeros(0, np.int64)))
        for t, a, refs in chosen:
            why = reason(TEMPLATES[t][1], ANSWERS[a], refs, boxes, cls, colour, attrs, H, W, int(rng.integers(2)))
            for p in ask(t, split, rng):
                qs.append((t, a, i, refs + box_offsets[-1], written_answer(ANSWERS[a], why), p))
        box_offsets.append(box_offsets[-1] + len(boxes))
        q_offsets.append(len(qs))
    template, answer, image, refs, text, phrasing = zip(*qs) if qs else [()] * 6
    longest = max((len(Tokenizer.split(x)) + 1 for x in text), default=0)    # with the closing <eos>
    if longest > R:
        raise LabelError(f"an answer and its reason take {longest} tokens, --max_answer_len={R} ---> HINT: "
                         f"--max_answer_len={longest} or more")
    enc = np.stack([tok.encode(p, cfg['max_q_len'])[0] for _, p, _, _ in PHRASES]).astype(np.uint16)  # (phrasings, T)
    template, phrasing = np.asarray(template, dtype=np.int16), np.asarray(phrasing, dtype=np.int16)
    arrays = {'boxes': np.concatenate([k[2] for k in kept] + [np.zeros((0, 4), np.float32)]),     # (M, 4)
              'box_class': np.concatenate([k[3] for k in kept] + [np.zeros(0, np.int16)]),        # (M,)
              'box_colour': np.concatenate([k[4] for k in kept] + [np.zeros(0, np.int8)]),       # (M,)
              'box_offsets': np.asarray(box_offsets, dtype=np.int64),
              'questions': enc[phrasing.astype(np.int64)].reshape(-1, cfg['max_q_len']),     # (Q, T)
              'phrasing': phrasing,                                                             # (Q,) into PHRASES
              # 'answer : reason <eos>' after the question: the generative mode's target (the <bos> dropped)
              'answer_text': np.asarray([tok.encode(x, R + 1)[0][1:] for x in text], np.uint16).reshape(-1, R),  # (Q, R)
              'answers': np.asarray(answer, dtype=np.int16), 'template': template,
              'family': np.asarray([FAMILIES.index(TEMPLATES[t][0]) for t in template], dtype=np.uint8),
              'image_idx': np.asarray(image, dtype=np.int32),
              'q_offsets': np.asarray(q_offsets, dtype=np.int64),
              'referents': np.concatenate([*refs, np.zeros(0, dtype=np.int64)]).astype(np.int32),  # (R,)
              'ref_offsets': np.cumsum([0] + [len(r) for r in refs]).astype(np.int64),
              # per image: raining 1, not 0, not known -1 (the rain patch label's target)
              'rain': np.asarray([{'yes': 1, 'no': 0}.get(RAINING.get(k[1].get('weather')), -1) for k in kept], np.int8)}
    for k, arr in arrays.items():
        np.save(os.path.join(tmp, f'{split}_{k}.npy'), arr)
    with open(os.path.join(tmp, f'{split}_names.json'), 'w') as fh:
        json.dump([k[0] for k in kept], fh)
    return arrays, attribute_mix(kept)


def attribute_mix(kept):
    """{attribute: {value: frames}} of kept frames, for BDD_MIX's attributes: the memmaps keep no attributes, so
    meta.json keeps their counts."""
    mix = {k: {} for k in BDD_MIX}
    for _, attrs, *_ in kept:
        for k, counts in mix.items():
            v = attrs.get(k, 'undefined')
            counts[v] = counts.get(v, 0) + 1
    return mix


# The real distribution, as measured on 339 BDD100K frames (../shared/BDD100K_FORMAT.md section 7), written as
# it is there: px of a 720-high frame, % of frames. report() prints every prepared dataset's figures beside them.
BDD_H = 720
BDD_BOXES = {  # class: (boxes per frame, % of frames with one, box height px p10/p50/p90, box bottom y px p10/p50/p90)
    'car': (9.4, 99, (14, 35, 144), (286, 379, 507)), 'traffic sign': (3.7, 83, (9, 19, 51), (152, 272, 389)),
    'traffic light': (2.9, 59, (11, 20, 46), (164, 274, 384)), 'pedestrian': (1.8, 41, (21, 50, 125), (286, 375, 489)),
    'truck': (0.6, 31, (18, 58, 206), (263, 366, 507)), 'bicycle': (0.2, 13, (31, 52, 152), (322, 430, 571)),
    'bus': (0.2, 16, (21, 74, 299), (277, 375, 505)), 'rider': (0.2, 13, (21, 54, 153), (280, 370, 478)),
    'motorcycle': (0.1, 6, (25, 49, 162), (343, 398, 499)), 'train': (0.0, 1, None, None)}
BDD_MIX = {'scene': {'city street': 51, 'highway': 21, 'residential': 12},           # % of frames; the rest of each
           'timeofday': {'daytime': 52, 'night': 23, 'dawn/dusk': 12, 'undefined': 1},   # row is other values
           'weather': {'clear': 32, 'undefined': 15, 'snowy': 12, 'overcast': 11, 'partly cloudy': 9, 'rainy': 8,
                       'foggy': 0.5}}                                                  # foggy: "<1%"


def box_stats(a, H):
    """Per class of a split's boxes: boxes per frame, share of frames with one, and box height and bottom y
    p10/p50/p90 as fractions of the image height H (so they compare across resolutions)."""
    n = max(len(a['box_offsets']) - 1, 1)
    frame = np.repeat(np.arange(len(a['box_offsets']) - 1), np.diff(a['box_offsets']))    # (M,) image of each box
    q = lambda v: np.percentile(v / H, [10, 50, 90]).round(3).tolist() if len(v) else None
    out = {'boxes_per_frame': round(len(a['boxes']) / n, 2)}
    for k, c in enumerate(BOX_CLASSES):
        b = a['boxes'][a['box_class'] == k]                                          # (m, 4) x1, y1, x2, y2
        out[c] = {'per_frame': round(len(b) / n, 2), 'frames': round(len(np.unique(frame[a['box_class'] == k])) / n, 3),
                  'height': q(b[:, 3] - b[:, 1]), 'bottom': q(b[:, 3])}
    return out


def summarize(arrays, H):
    """-> counts, answer_dist, blind_majority_acc (majority answer per template, learned on train), box_stats."""
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
    return counts, dist, blind, {s: box_stats(a, H) for s, a in arrays.items()}


def made_with(final, args):
    """Whether the prepared dataset in final is complete and was made from these arguments by this version."""
    try:
        meta = read_json(os.path.join(final, 'meta.json'))
    except (OSError, LabelError):   # none, or damaged: build anew
        return False
    return meta.get('args') == args and (meta.get('generator_version'), meta.get('format_version')) == (VERSION, FORMAT_VERSION)


def dataset_dir(cfg, name):
    """Where a dataset goes: --out, else data/<name> beside this file."""
    return os.path.normpath(cfg['out'] or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', name))


def dataset_meta(cfg, args, source, fmt, tok, stats, written, skipped):
    """meta.json's content: what the folder holds, the words, answers and phrasings it was asked in, the pixel
    statistics the model normalises by, the summary prepare.py prints, and the rules and arguments that made it."""
    mean = stats[0] / np.maximum(stats[2], 1)
    std = np.sqrt(np.maximum(stats[1] / np.maximum(stats[2], 1) - mean ** 2, 0))
    counts, dist, blind, box = summarize({s: w[0] for s, w in written.items()}, cfg['img_h'])
    return {'format_version': FORMAT_VERSION, 'generator_version': VERSION, 'source': source, 'source_format': fmt,
            'tokenizer': tok.to_dict(), 'max_q_len': cfg['max_q_len'], 'max_answer_len': cfg['max_answer_len'],
            'answers': ANSWERS, 'families': FAMILIES,
            'templates': [q for _, q in TEMPLATES], 'template_family': [f for f, _ in TEMPLATES],
            'phrasings': [p for _, p, _, _ in PHRASES], 'phrasing_template': [t for t, _, _, _ in PHRASES],
            'held_out': [h for _, _, h, _ in PHRASES], 'new_words': [n for _, _, _, n in PHRASES],
            'box_classes': BOX_CLASSES, 'img_h': cfg['img_h'], 'img_w': cfg['img_w'],
            'mean': mean.round(4).tolist(), 'std': std.round(4).tolist(), 'counts': counts, 'answer_dist': dist,
            'blind_majority_acc': blind, 'box_stats': box, 'attributes': {s: w[1] for s, w in written.items()},
            'filters': {k: cfg[k] for k in ('weather', 'timeofday', 'max_images')},
            'skipped': dict(sorted(skipped.items())), 'seed': cfg['seed'], 'args': args,
            'rules': {'horizon': HORIZON, 'slope': SLOPE, 'visible': VISIBLE, 'tiny': TINY, 'close': CLOSE,
                      'far': FAR, 'light_visible': LIGHT_VISIBLE, 'light_tiny': LIGHT_TINY, 'lane_margin': LANE_MARGIN,
                      'edge': EDGE, 'wide': [c for c, w in zip(BOX_CLASSES, WIDE) if w]}}


def build(cfg, root, name, source):
    """Ingest the BDD tree at root into dataset_dir(cfg, name); -> the folder."""
    final = dataset_dir(cfg, name)
    replaceable = os.path.isfile(os.path.join(final, 'meta.json')) or os.path.isdir(final) and not os.listdir(final)
    if os.path.exists(final) and not replaceable:  # replace_dir would delete what is there
        sys.exit(f"--out={final} exists and is not a prepared dataset (no meta.json), so it is left as it is ---> HINT: "
                 f"name a new folder")
    args = {k: v for k, v in cfg.items() if k not in ('out', 'force', 'workers', 'list_questions')}  # what decides the content
    if not cfg['force'] and made_with(final, args):
        print(f"{final} is complete and was made with the same arguments: reusing it (--force=True rebuilds)")
        return final
    if os.path.isfile(os.path.join(final, 'meta.json')):
        print(f"note: the dataset in {final} is replaced when this one is complete (--force=True, other arguments, "
              f"another prepare.py or a damaged meta.json) ---> HINT: Ctrl-C and name another --out to keep it")
    tmp = fresh_tmp(final)
    try:
        with make_pool(cfg['workers']) as pool:
            skipped = {}
            fmt, splits = load_frames(root, cfg, skipped)
            # from constants only, so the same for every source (eval.py refuses a model of other words); held-out
            # phrasings too (their words also occur in seen ones), never the new-word questions
            tok = Tokenizer.build([p for _, p, _, new in PHRASES if not new] + [written_answer(a, '') for a in ANSWERS]
                                  + reason_corpus())
            assert len(tok) < 2 ** 16, f"{len(tok)} words do not fit the uint16 question ids"
            stats = np.zeros((3, 3))                      # sum, sum of squares, pixel count per channel
            written = {s: write_split(tmp, s, splits[s], cfg, pool, skipped, tok, stats if s == 'train' else None)
                       for s in ('train', 'val', 'test')}
        if all(len(w[0]['q_offsets']) == 1 for w in written.values()):
            raise LabelError(f"no usable frame under {root} (skipped: {dict(sorted(skipped.items())) or 'none'}) ---> HINT: "
                             f"images go in images/100k/<split>/<name>.jpg; --weather keeps one of "
                             f"{', '.join(BDD_MIX['weather'])}, --timeofday one of {', '.join(BDD_MIX['timeofday'])}")
        meta = dataset_meta(cfg, args, source, fmt, tok, stats, written, skipped)
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
    s = max(meta['counts'], key=lambda s: (s == 'train' and meta['counts'][s]['images'] > 0, meta['counts'][s]['images']))
    print(f"  {s} split vs real BDD100K (heights and bottoms as fractions of the image height H):")
    for line in bdd_comparison(meta['box_stats'][s], meta['attributes'][s]):
        print('    ' + line)


def bdd_comparison(box, mix):
    """One line per statistic: a split's box_stats and attribute counts, each beside BDD_BOXES' or BDD_MIX's figure."""
    frac = lambda v: '/'.join(f'{x:.2f}' for x in v) if v else '-'
    pct = lambda v: '<1%' if 0 < v < 1 else f'{v:.0f}%'
    lines = [f"boxes per frame {box['boxes_per_frame']:.1f} (BDD {sum(r[0] for r in BDD_BOXES.values()):.1f})"]
    for c, (per_frame, frames, height, bottom) in BDD_BOXES.items():
        s, bdd = box[c], lambda px: frac([v / BDD_H for v in px] if px else None)
        lines.append(f"{c:13s} per frame {s['per_frame']:4.1f} (BDD {per_frame:.1f}), in {pct(100 * s['frames']):>3s} of "
                     f"frames (BDD {pct(frames)}), height p10/p50/p90 {frac(s['height'])} H (BDD {bdd(height)}), "
                     f"bottom y {frac(s['bottom'])} H (BDD {bdd(bottom)})")
    for k, ref in BDD_MIX.items():
        n = max(sum(mix[k].values()), 1)
        lines.append(f"{k:9s} " + ', '.join(f"{v} {pct(100 * mix[k].get(v, 0) / n)} (BDD {pct(ref[v]) if v in ref else '-'})"
                                            for v in list(ref) + sorted(set(mix[k]) - set(ref))))
    return lines


def run(cfg):
    t0 = time.time()
    longest = max(len(Tokenizer.split(p)) for _, p, _, _ in PHRASES) + 2      # with <bos> and <eos>
    for ok, msg in [(cfg['max_q_len'] >= longest, f"--max_q_len={cfg['max_q_len']} cannot hold the longest question "
                                                  f"({longest} tokens) ---> HINT: use --max_q_len={longest} or more"),
                    (min(cfg['img_h'], cfg['img_w']) > 0 and cfg['img_h'] % 2 == cfg['img_w'] % 2 == 0,
                     f"--img_h={cfg['img_h']} --img_w={cfg['img_w']}: sizes must be positive and even (the augmentation "
                     f"works on 2x2 blocks) ---> HINT: multiples of the model's patch, such as 144 and 256"),
                    (cfg['seed'] >= 0, f"--seed={cfg['seed']} must be >= 0"),
                    (min(cfg['train_per_family'], cfg['workers'], cfg['synth_train'], cfg['synth_val']) >= 1,
                     "--train_per_family, --workers, --synth_train and --synth_val must be >= 1")]:
        if not ok:
            sys.exit(msg)
    if cfg['bdd_root']:
        if not os.path.isdir(cfg['bdd_root']):
            sys.exit(f"--bdd_root={cfg['bdd_root']} is not a folder; point it at the BDD100K root (images/, labels/)")
        final = build(cfg, cfg['bdd_root'], 'bdd100k', 'bdd100k')
    else:
        import world  # here, not at the top: world.py imports this file's rule numbers, so the import stays one-way
        root = dataset_dir(cfg, 'synthetic') + '_bdd'   # beside the dataset: another --out renders its own world
        with make_pool(cfg['workers']) as pool:
            world.render_tree(root, cfg['seed'], cfg['synth_train'], cfg['synth_val'], pool)
        final = build({**cfg, 'world': world.SOURCE}, root, 'synthetic', 'synthetic')   # a new world, new data
    print(f"done in {time.time() - t0:.1f}s: {final}")
    return final


# -----------------------------------------------------------------------------
# Reading a prepared dataset: train.py, eval.py, viz.py and bench.py all come through here

SPLIT_ARRAYS = ('images', 'boxes', 'box_class', 'box_colour', 'box_offsets', 'questions', 'answer_text', 'answers',
                'family', 'template', 'phrasing', 'image_idx', 'q_offsets', 'referents', 'ref_offsets', 'rain')


def load_meta(data_dir):
    """The dataset's meta.json; a clear error when prepare.py has not (completely) run."""
    path = os.path.join(data_dir, 'meta.json')
    if not os.path.exists(path) and os.path.isdir(os.path.join(data_dir, 'labels')):
        sys.exit(f"{data_dir} is a BDD100K tree, not a prepared dataset ---> HINT: `python prepare.py "
                 f"--bdd_root={data_dir} --out=<a new folder>`, then pass that folder")
    if not os.path.exists(path):
        sys.exit(f"no prepared dataset at {data_dir} (no meta.json) ---> HINT: run `python prepare.py` first (the "
                 f"synthetic world), or `python prepare.py --bdd_root=<your BDD100K folder> --out={data_dir}`")
    try:
        meta = read_json(path)
    except LabelError as e:
        sys.exit(f"{e} ---> HINT: re-run prepare.py with --force=True to rebuild {data_dir}")
    if not isinstance(meta, dict) or meta.get('format_version') != FORMAT_VERSION:
        sys.exit(f"{data_dir} was written by another prepare.py (format {meta.get('format_version')}, "
                 f"expected {FORMAT_VERSION}) ---> HINT: re-run `python prepare.py --force=True`")
    return meta


def check_compatible(model, meta, data_dir):
    """Exit with one line when a model and a prepared dataset disagree on words, answers or image size."""
    for what, ours, theirs in (('vocabulary', model.tokenizer.itos, meta['tokenizer']['itos']),
                               ('answer classes', list(model.answers), list(meta['answers'])),
                               ('image size', [model.cfg.img_h, model.cfg.img_w], [meta['img_h'], meta['img_w']])):
        if ours != theirs:
            sizes = f" ({ours[0]}x{ours[1]} against {theirs[0]}x{theirs[1]})" if what == 'image size' else ''
            sys.exit(f"the checkpoint and the dataset {data_dir} have different {what}{sizes} ---> HINT: pass the "
                     f"dataset it was trained on (--data_dir), or fine-tune it on this one")


DATASET_FIELDS = ('img_h', 'img_w', 'vocab_size', 'max_q_len', 'max_answer_len', 'n_answers', 'n_patch_labels',
                  'patch_label_weights', 'answer_weights')


def data_shape(meta):
    """The TVLMConfig fields a prepared dataset fixes: image size, vocabulary, question length, answers."""
    return {'img_h': meta['img_h'], 'img_w': meta['img_w'], 'vocab_size': len(meta['tokenizer']['itos']),
            'max_q_len': meta['max_q_len'], 'max_answer_len': meta['max_answer_len'], 'n_answers': len(meta['answers'])}


def model_config(settings, shape, answer_counts):
    """The TVLMConfig that train.py trains and bench.py times, from the same config: the model fields of
    `settings` (train.py's config dict), the dataset's `shape` (data_shape), a patch-label head when patch_weight
    asks for one, and with class_weights answer weights from the train split's answer_counts int[A]."""
    model_fields = {f.name for f in fields(TVLMConfig)} - set(DATASET_FIELDS)
    args = {k: v for k, v in settings.items() if k in model_fields}
    if settings['patch_weight'] and settings['fusion'] != 'none':
        args['n_patch_labels'], args['patch_label_weights'] = len(PATCH_LABELS), PATCH_LABEL_WEIGHTS
    if settings['class_weights']:  # inverse frequency, normalised so a balanced dataset gets all ones
        counts = np.asarray(answer_counts, dtype=np.float64)
        args['answer_weights'] = tuple((counts.sum() / np.maximum(counts, 1) / len(counts)).tolist())
    return TVLMConfig(**args, **shape)


def open_split(data_dir, split):
    """{name: read-only memmap} for one split; nothing is read into RAM until indexed."""
    if not os.path.exists(os.path.join(data_dir, f'{split}_answers.npy')):
        sys.exit(f"{data_dir} has no split {split!r} ---> HINT: prepare.py writes train, val and test")
    try:
        arrays = {name: np.load(os.path.join(data_dir, f'{split}_{name}.npy'), mmap_mode='r') for name in SPLIT_ARRAYS}
        open(os.path.join(data_dir, f'{split}_names.json')).close()   # eval.py names the frames it shows
        return arrays
    except (OSError, ValueError) as e:   # a file deleted or cut short since prepare.py wrote it
        sys.exit(f"{data_dir} is damaged: {e} ---> HINT: re-run prepare.py with --force=True to rebuild it")


def sample_batch(arrays, n_images, questions_per_image, generator):
    """A random training batch: n_images images, then questions_per_image of each image's questions (each once
    before any twice, so an image with fewer questions still fills its share). All numpy: images uint8
    (n_images, H, W, 3), questions int64 (B, T) cut to the longest question, answers (B,), image_idx (B,),
    the images' rows in the split (n_images,), for patch_labels, and the questions' rows (B,)."""
    counts = np.diff(arrays['q_offsets'])                                      # (N,) questions per image
    has_q = np.flatnonzero(counts)
    pick = np.sort(has_q[torch.randint(len(has_q), (n_images,), generator=generator).numpy()])  # file order reads
    # each image's questions in a random order, repeated as needed: no question twice before every one was asked once
    c = counts[pick]                                                           # (n,) questions of each picked image
    keys = torch.rand(n_images, int(c.max()), generator=generator).numpy()     # (n, max c)
    keys[np.arange(keys.shape[1]) >= c[:, None]] = np.inf                      # no such question: sorted last
    order = keys.argsort(1)                                                    # (n, max c) a permutation per image
    offset = order[np.arange(n_images)[:, None], np.arange(questions_per_image) % c[:, None]]  # (n, questions_per_image)
    rows = (arrays['q_offsets'][pick, None] + offset).ravel()                  # (B,) question rows
    q = arrays['questions'][rows].astype(np.int64)                             # (B, T)
    q = q[:, :int((q != 0).sum(1).max())]                                      # drop the columns of pure padding
    return arrays['images'][pick], q, arrays['answers'][rows].astype(np.int64), \
        np.repeat(np.arange(n_images), questions_per_image), pick, rows


def join_answers(questions, answer_text):
    """The generative mode's sequences: each question int64 (B, T) (<bos> .. <eos>, then pads) directly followed by
    its 'answer : reason <eos>' (B, R) -> int64 (B, T') with T' the longest question + answer."""
    q_len, a_len = (questions != 0).sum(1), (answer_text != 0).sum(1)               # (B,), (B,)
    out = np.zeros((len(questions), int((q_len + a_len).max(initial=0))), np.int64)  # (B, T')
    out[:, :questions.shape[1]] = questions[:, :out.shape[1]]
    col = np.arange(answer_text.shape[1])                                            # (R,)
    keep = col < a_len[:, None]                                                      # (B, R)
    rows = np.broadcast_to(np.arange(len(questions))[:, None], keep.shape)          # (B, R)
    out[rows[keep], (q_len[:, None] + col)[keep]] = answer_text[keep]
    return out


def spans(starts, ends):
    """The rows starts[i]..ends[i]-1 of every span, joined: int64 (sum of lengths,), and which span each is from."""
    lengths = ends - starts                                                    # (S,)
    owner = np.repeat(np.arange(len(starts)), lengths)                         # (R,)
    return starts[owner] + np.arange(len(owner)) - (np.cumsum(lengths) - lengths)[owner], owner


def patch_masks(boxes, patch, H, W):
    """Which patches of an H x W image each box float[M, 4] (stored pixels) overlaps, tiny boxes too: bool (M, P),
    P = H/p * W/p in row-major order (the ViT's token order). The one place a box becomes patch labels and look
    targets (eval.py's grounding measures the share of each patch a box covers instead)."""
    cells = boxes / patch                                                      # (M, 4) in patch units
    cols, rows = np.arange(W // patch), np.arange(H // patch)
    in_x = (cols >= np.floor(cells[:, :1])) & (cols < np.ceil(cells[:, 2:3]))  # (M, W/p)
    in_y = (rows >= np.floor(cells[:, 1:2])) & (rows < np.ceil(cells[:, 3:]))  # (M, H/p)
    return (in_y[:, :, None] & in_x[:, None, :]).reshape(len(boxes), len(rows) * len(cols))   # (M, P)


def union_by(masks, group, n):
    """The rows of bool masks (R, P) OR-ed together by their group int (R,) (sorted, in 0..n-1): float32 (n, P) of
    0/1, all zero for a group with no rows."""
    first = np.flatnonzero(np.diff(group, prepend=-1))                         # where each group's rows start
    out = np.zeros((n, masks.shape[1]), np.float32)
    out[group[first]] = np.logical_or.reduceat(masks, first)
    return out


def patch_labels(arrays, rows, patch):
    """Which of PATCH_LABELS touch each patch of the images at `rows` (int64 (n,)): float32 (n, H/p, W/p, K) of 0/1,
    the targets of the model's auxiliary patch head; 'rain' is the frame's, on every patch, -1 where not known."""
    H, W = arrays['images'].shape[1:3]
    box, image = spans(arrays['box_offsets'][rows], arrays['box_offsets'][rows + 1])   # (M,) each
    masks = patch_masks(arrays['boxes'][box], patch, H, W)                    # (M, P)
    colour = arrays['box_colour'][box]                                         # (M,) a lit traffic light also marks
    lit = colour > 0                                                           # its colour's channel
    label = np.concatenate([arrays['box_class'][box], len(BOX_CLASSES) + colour[lit] - 1])    # (M + lit,)
    slot = np.concatenate([image, image[lit]]) * len(PATCH_LABELS) + label    # (M + lit,) row of (image, label)
    order = np.argsort(slot, kind='stable')
    out = union_by(np.concatenate([masks, masks[lit]])[order], slot[order], len(rows) * len(PATCH_LABELS))   # (n K, P)
    out = out.reshape(len(rows), len(PATCH_LABELS), H // patch, W // patch).transpose(0, 2, 3, 1)   # (n, H/p, W/p, K)
    out[..., PATCH_LABELS.index('rain')] = arrays['rain'][rows][:, None, None]
    return out


def look_targets(arrays, q_rows, patch):
    """Where each question at q_rows (indices or a slice) should look, the targets of the model's look loss: float32
    (B, H/p, W/p), the patches of its referents (the objects and lights that decided its answer) weighted alike and
    summing to 1; every patch alike for a question about the whole frame (the weather, the time of day), whose answer
    no patch holds alone; all zero for one the rules answered from no object (an absence, out of scope)."""
    H, W = arrays['images'].shape[1:3]
    starts, ends = arrays['ref_offsets'][:-1][q_rows], arrays['ref_offsets'][1:][q_rows]     # (B,) each
    ref, question = spans(starts, ends)                                        # (R,) each
    out = union_by(patch_masks(arrays['boxes'][arrays['referents'][ref]], patch, H, W), question, len(starts))  # (B, P)
    out[arrays['family'][q_rows] == FAMILIES.index('scene')] = 1
    return (out / np.maximum(out.sum(1, keepdims=True), 1)).reshape(len(starts), H // patch, W // patch)  # (B, H/p, W/p)


def jpeg(image, quality):
    """uint8 (H, W, 3) -> the same image after JPEG compression at quality 1-95."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='JPEG', quality=int(quality))
    return np.asarray(Image.open(buf).convert('RGB'))


def recompress(images, generator):
    """The host half of train.py's photometric augmentation: a quarter of the images JPEG-compressed at quality
    20-44 (the one step with no device kernel, so it is kept to a share). uint8 (N, H, W, 3) -> the same."""
    quality = (20 + 96 * torch.rand(len(images), generator=generator)).numpy()
    return np.stack([jpeg(im, q) if q < 44 else im for im, q in zip(images, quality)])   # (N, H, W, 3)


def photometric(images, generator):
    """Per image, the ways two cameras differ: exposure and contrast, white balance, focus (blur) and sensor
    noise, drawn from `generator`, so a from-scratch ViT cannot lean on the renderer's exact pixels.
    uint8 (N, H, W, 3), H and W even, on any device -> the same; the float work stays on that device."""
    N, H, W, _ = images.shape
    dev = images.device
    r = torch.rand(N, 8, 1, 1, generator=generator).to(dev)                    # (N, 8, 1, 1) uniform draws; the 8th
    # is spare, kept so that the draws after it (and so every seeded run) stay as they were
    x = images.permute(0, 3, 1, 2).contiguous().float()                        # (N, 3, H, W); contiguous: ~5x faster ops
    contrast, exposure, balance = 0.6 + 0.8 * r[:, :1], 0.6 + 0.8 * r[:, 1:2], 0.85 + 0.3 * r[:, 2:5]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)                                  # (N, 1, 1, 1)
    # ((x - mean) * contrast + mean * exposure) * balance, as one multiply-add over the pixels
    x = torch.addcmul(mean * (exposure - contrast) * balance, x, contrast * balance)    # (N, 3, H, W)
    soft = torch.nonzero(r[:, 5, 0, 0] > 0.5).squeeze(1)                       # half the images, by a random amount
    sharp = x[soft]                                                             # (n, 3, H, W)
    p = F.pad(sharp, (1, 1, 1, 1), mode='replicate')                            # (n, 3, H+2, W+2)
    # the 1-2-1 kernel in x, then in y, as (a + 2b) + c in one temporary per pass: bit for bit a + 2 * b + c, which
    # makes three, and half the time
    p = torch.add(p[..., :-2], p[..., 1:-1], alpha=2).add_(p[..., 2:])          # (n, 3, H+2, W)
    blurred = torch.add(p[:, :, :-2], p[:, :, 1:-1], alpha=2).add_(p[:, :, 2:]).div_(16)   # (n, 3, H, W)
    x.index_copy_(0, soft, sharp.lerp_(blurred, r[soft, 5:6] * 2 - 1))
    # sensor noise at half resolution (a quarter of the random numbers; demosaicing correlates neighbours anyway)
    noise = torch.randn(N, 3, H // 2, 1, W // 2, 1, generator=generator).to(dev)  # (N, 3, H/2, 1, W/2, 1)
    x.view(N, 3, H // 2, 2, W // 2, 2).add_(noise.mul_(12 * r[:, 6:7, :, :, None, None]))  # each on a 2 x 2 block
    return x.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)       # (N, H, W, 3)


def to_device(x, device):
    """A numpy array -> a tensor on `device`; pinned, so the copy overlaps the GPU's work (nanoGPT train.py)."""
    x = torch.from_numpy(np.require(x, requirements=['C', 'W']))  # copies only read-only memmap slices
    return x.pin_memory().to(device, non_blocking=True) if str(device).startswith('cuda') else x.to(device)


def loss_inputs(arrays, cfg, q, rows, q_rows):
    """What the loss reads besides images and answer classes, for questions int64 (B, T) at q_rows about the images at
    rows, in numpy: the tokens (with cfg.answer='generate', each question followed by its 'answer : reason <eos>'),
    and the targets of cfg's auxiliary losses, patch labels (n, H/p, W/p, K) and look targets (B, H/p, W/p), or
    None where cfg has that loss off. train.py's training and val batches both come through here."""
    if cfg.answer == 'generate':
        q = join_answers(q, arrays['answer_text'][q_rows])
    return (q, patch_labels(arrays, rows, cfg.patch) if cfg.n_patch_labels else None,
            look_targets(arrays, q_rows, cfg.patch) if cfg.look_weight else None)


def training_batch(arrays, cfg, n_images, questions_per_image, generator, device, flip=None, augment=False,
                   word_dropout=0.0):
    """train.py's training batch (bench.py times this same path), on `device`: images uint8 (N, H, W, 3), tokens
    (B, T), targets, image_idx (the int questions_per_image: the questions come that many per image, in image
    order; see TVLM.forward), and patch-label targets (N, H/p, W/p, K) when cfg has a patch head. Tokens and
    targets: the questions and their answer classes (B,), or with cfg.answer='generate' the questions followed by
    their answers and reasons, with next-token targets (B, T) on those words only (tvlm.answer_targets).
    flip: tvlm.mirror_tables' (tokens, answers) to mirror half the images; augment: recompress, then photometric.
    word_dropout: the share of question words (never the answer's) read as <unk>: a wording never trained on still
    shares most of its words with one that was, so the model should not hang on any one of them (one seed trained
    on "Is the weather rainy?" got the held-out "Is it rainy?" right 65% of the time). In use an <unk> makes
    answer() abstain (TVLM.unknown_words), so these questions only teach. Last, the look loss's targets
    (B, H/p, W/p) when cfg.look_weight asks for them (else None)."""
    images, q, a, idx, rows, q_rows = sample_batch(arrays, n_images, questions_per_image, generator)
    q, patches, looks = loss_inputs(arrays, cfg, q, rows, q_rows)
    if flip is not None:  # mirror half of the images; their questions say right where they said left, and vice versa
        mirrored = (torch.rand(len(images), generator=generator) < 0.5).numpy()
        images = np.where(mirrored[:, None, None, None], images[:, :, ::-1], images)
        if patches is not None:
            patches = np.where(mirrored[:, None, None, None], patches[:, :, ::-1], patches)
        if looks is not None:
            looks = np.where(mirrored[idx][:, None, None], looks[:, :, ::-1], looks)
        q = np.where(mirrored[idx][:, None], flip[0][q], q)
        a = np.where(mirrored[idx], flip[1][a], a)
    if word_dropout:  # some question words read as <unk>, so that no answer hangs on one word (see the docstring)
        question = np.arange(q.shape[1]) < Tokenizer.question_end(torch.from_numpy(q)).numpy()[:, None]   # (B, T)
        drawn = torch.rand(q.shape, generator=generator).numpy() < word_dropout       # (B, T)
        q = np.where(question & (q > Tokenizer.eos_id) & drawn, Tokenizer.unk_id, q)
    images = to_device(recompress(images, generator) if augment else images, device)     # (N, H, W, 3) uint8
    if augment:
        images = photometric(images, generator)
    q = to_device(q, device)
    targets = answer_targets(q) if cfg.answer == 'generate' else to_device(a, device)
    aux = [None if t is None else to_device(t, device) for t in (patches, looks)]
    return images, q, targets, questions_per_image, *aux


def split_batches(arrays, max_questions, max_images=None):
    """Every question of a split in file order, whole images at a time, about max_questions per batch. Yields
    (image rows int64 (n,), question rows slice, images (n, H, W, 3), questions int64 (Q, T'), image_idx int64 (Q,)
    into the n images)."""
    q_off = arrays['q_offsets']
    n_img = len(q_off) - 1 if max_images is None else min(max_images, len(q_off) - 1)
    lo = 0
    while lo < n_img:
        hi = int(np.searchsorted(q_off, q_off[lo] + max_questions, side='right')) - 1
        hi = min(n_img, max(hi, lo + 1))                                       # at least one image per batch
        q_rows = slice(int(q_off[lo]), int(q_off[hi]))
        q = arrays['questions'][q_rows].astype(np.int64)                       # (Q, T)
        if len(q):  # an image without questions has nothing to ask
            yield (np.arange(lo, hi), q_rows, arrays['images'][lo:hi], q[:, :int((q != 0).sum(1).max())],
                   arrays['image_idx'][q_rows].astype(np.int64) - lo)
        lo = hi


if __name__ == '__main__':
    # world.py imports from prepare: give it this module, not a second copy of this file (whose LabelError the
    # except below would not catch)
    sys.modules['prepare'] = sys.modules['__main__']
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    if list_questions:
        print_questions()
        sys.exit(0)
    try:
        run({k: globals()[k] for k in config_keys})
    except LabelError as e:
        sys.exit(f"error: {e}")
