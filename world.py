"""
The embedded synthetic world: dash-cam frames of streets, drawn with PIL through a pinhole camera (cars, trucks,
buses, pedestrians, cyclists, traffic lights and signs on roads of one to four lanes; day, dusk or night; clear,
rain or fog). It writes a real BDD100K tree, the 2018 layout:

    images/100k/{train,val}/<name>.jpg          640x360 JPEGs
    labels/bdd100k_labels_images_{train,val}.json    box2d labels with BDD's 2018 category names and attributes

which prepare.py then ingests unchanged, by the same code as the real dataset, so `python prepare.py` tests the
real path. Objects are placed clear of the question rules' unsure bands (the numbers in prepare.py), so most
questions are decidable. Deterministic for a seed: the same seed gives the same JPEG bytes and labels whatever
the number of workers.

    render_tree('data/synthetic_bdd', seed=1337, n_train=6300, n_val=500, pool=pool)   # what prepare.py does
"""
import hashlib
import json
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

# the world obeys prepare.py's rule numbers, so it imports them; prepare.py imports this module only inside
# run(), so the import graph has no cycle
from prepare import (CLOSE, FAR, HORIZON, LANE_MARGIN, LIGHT_TINY, LIGHT_VISIBLE, SLOPE, TINY, VERSION, VISIBLE,
                     progress, read_json, replace_dir)

# -----------------------------------------------------------------------------
# the camera and a scene: layout, then labelled objects clear of the rules' unsure bands

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

# -----------------------------------------------------------------------------
# drawing, far to near

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

# -----------------------------------------------------------------------------
# the tree: one JPEG and one 2018 label dict per frame

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


def render_tree(root, seed, n_train, n_val, pool):
    """Render the synthetic BDD100K tree once (n_train frames into BDD's train, n_val into its val); reuse it
    when render.json matches. pool: anything with imap, e.g. prepare.make_pool(workers)."""
    # prepare.py's VERSION: a new prepare.py (new rule numbers, say) must re-render the world
    spec = {'version': VERSION, 'seed': seed, 'train': n_train, 'val': n_val, 'size': [RW, RH]}
    done = os.path.join(root, 'render.json')
    if os.path.exists(done) and read_json(done) == spec:
        print(f"reusing the synthetic BDD100K tree in {root}")
        return
    tmp = f'{root}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n in (('train', n_train), ('val', n_val)):
        os.makedirs(os.path.join(tmp, 'images', '100k', split))
        jobs = [(tmp, split, i, seed) for i in range(n)]
        frames = list(progress(pool.imap(render_frame, jobs, chunksize=16), len(jobs), f'render {split}'))
        os.makedirs(os.path.join(tmp, 'labels'), exist_ok=True)
        with open(os.path.join(tmp, 'labels', f'bdd100k_labels_images_{split}.json'), 'w') as fh:
            json.dump(sorted(frames, key=lambda f: f['name']), fh)
    with open(os.path.join(tmp, 'render.json'), 'w') as fh:
        json.dump(spec, fh)                              # last: a tree without it is never reused
    replace_dir(tmp, root)
