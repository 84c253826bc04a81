"""
The embedded synthetic world: dash-cam frames of streets through a pinhole camera, drawn with PIL and finished with
numpy to look like BDD100K's phone and dash-cam photos rather than cartoons. City streets, residential streets and
highways: textured asphalt with worn markings, facades with windows, houses, trees, lamps and wires under a sky
with clouds; moving and parked sedans, hatchbacks, SUVs, vans, trucks and buses (mostly from behind, some oncoming
or crossing); pedestrians in varied clothes and strides, now and then a crowd; cyclists, motorcyclists, traffic
lights and signs; day, dawn/dusk or night (head and tail lights, lit windows, lamps and their pools of light);
clear, partly cloudy, overcast, rain, snow or fog; the ego car's hood and dashboard in some frames; then the
camera's exposure, white balance, vignetting, bloom, blur, sensor noise and JPEG quality. The object mix, sizes and
positions and the weather, scene and time mix are drawn towards BDD100K_FORMAT.md section 7's (prepare.py prints
both side by side: fewer cars a frame, and people drawn larger, than BDD's). It writes a real BDD100K tree, the
2018 layout:

    images/100k/{train,val}/<name>.jpg          640x360 JPEGs
    labels/bdd100k_labels_images_{train,val}.json    box2d labels with BDD's 2018 category names and attributes

which prepare.py then ingests unchanged, by the same code as the real dataset, so `python prepare.py` tests the
real path. Every labelled box is drawn around what is drawn of its object in the frame, objects more than
two-thirds hidden by nearer ones are neither drawn nor labelled, and objects stay clear of the question rules'
unsure bands (the numbers in prepare.py; see judge), so the questions stay decidable. Deterministic for a seed: the
same seed gives the same JPEG bytes and labels whatever the number of workers.

    render_tree('data/synthetic_bdd', seed=1337, n_train=6300, n_val=500, pool=pool)   # what prepare.py does
"""
import functools
import hashlib
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# the world obeys prepare.py's rule numbers, so it imports them; prepare.py imports this module only inside
# run(), so the import graph has no cycle
from prepare import (BOX_CLASSES, CLOSE, EXIST_CLASS, FAR, HORIZON, LANE_MARGIN, LIGHT_TINY, LIGHT_VISIBLE, SLOPE, TINY,
                     VERSION, VISIBLE, fresh_tmp, progress, read_json, replace_dir, seen_size)

# -----------------------------------------------------------------------------
# the camera, the palettes, and noise textures made once per process

SOURCE = hashlib.md5(open(__file__, 'rb').read()).hexdigest()[:12]   # this file's content: edits re-render
RW, RH = 640, 360          # rendered JPEG size: a quarter of BDD's pixels, still >= 2x the stored size
FOCAL, CAM_H, LANE_W = 460.0, 1.6, 4.0    # CAM_H = LANE_W / 2 / SLOPE, so drawn lanes sit at u = +-1, +-3; above
                                           # most roofs (1.45 m), so the cars behind the one ahead still show
NAMES_2018 = {'pedestrian': 'person', 'bicycle': 'bike', 'motorcycle': 'motor'}
LIGHT_RGB = {'red': (255, 50, 35), 'yellow': (255, 185, 30), 'green': (70, 255, 150)}
# (label, width, height, length in m, waist and roof: body top as a share of the height, roof as a share of the width)
VEHICLES = {'sedan': ('car', 1.8, 1.45, 4.7, 0.55, 0.7), 'hatchback': ('car', 1.75, 1.5, 4.1, 0.55, 0.8),
            'suv': ('car', 1.95, 1.8, 4.9, 0.55, 0.86), 'van': ('car', 2.0, 2.2, 5.3, 0.45, 0.95),
            'box truck': ('truck', 2.45, 3.4, 7.5, 0.22, 1.0), 'semi': ('truck', 2.55, 4.0, 14.0, 0.22, 1.0),
            'bus': ('bus', 2.55, 3.2, 12.0, 0.3, 1.0)}
ROOF = (.32, .72)          # a car's roof along its flank, as shares of its length behind its face (draw_flank)
PAINT = [(232, 232, 228), (22, 22, 24), (128, 130, 133), (184, 186, 189), (38, 44, 62), (150, 24, 24),
         (28, 55, 115), (88, 92, 96), (215, 175, 30), (55, 80, 60), (125, 85, 55), (225, 205, 160)]
PAINT_P = np.cumsum([0.22, 0.19, 0.13, 0.14, 0.06, 0.07, 0.06, 0.06, 0.03, 0.02, 0.01, 0.01])   # mostly greyscale
CLOTHES = [(22, 22, 26), (40, 46, 72), (92, 92, 96), (205, 205, 200), (125, 30, 32), (58, 92, 145), (150, 118, 80),
           (32, 72, 52), (205, 160, 55), (170, 90, 125), (72, 52, 42), (215, 95, 40)]
SKIN = [(236, 198, 168), (218, 168, 128), (178, 128, 92), (122, 86, 60), (82, 56, 40)]
FACADES = [(150, 72, 56), (172, 98, 72), (192, 180, 158), (122, 122, 126), (204, 202, 196), (92, 102, 112),
           (112, 82, 62), (162, 150, 128), (72, 76, 86), (182, 160, 120)]
SIGNS = {'stop': (190, 25, 28), 'speed': (235, 235, 230), 'warning': (235, 195, 20), 'street': (25, 110, 60),
         'info': (30, 70, 160), 'one way': (20, 20, 20), 'back': (150, 152, 155)}
SIGN_P = np.cumsum([0.14, 0.2, 0.14, 0.18, 0.1, 0.1, 0.14])
PROPS_P = {'city street': np.cumsum([0.5, 0.35, 0.15]), 'highway': np.cumsum([0.1, 0.9, 0]),   # tree, lamp, pole
           'residential': np.cumsum([0.55, 0.15, 0.3])}


def pick(options, rng, p=None):
    """One of the options, uniformly or by the cumulative weights p (rng.choice is slow on a hot path)."""
    return options[rng.integers(len(options)) if p is None else int(np.searchsorted(p, rng.random() * p[-1]))]


def shade(rgb, s):
    return tuple(min(255, int(c * s)) for c in rgb)


class Cam:
    """Pinhole camera CAM_H above flat ground; (X right, Y up, Z ahead) in metres -> pixels."""
    def __init__(self, vx, yh):
        self.vx, self.yh = vx, yh

    def __call__(self, X, Y, Z):
        return self.vx + FOCAL * X / Z, self.yh + FOCAL * (CAM_H - Y) / Z

    def box(self, o):
        """The image box of an object's cuboid: o['w'] wide, o['h'] tall from o['y0'] up, o['len'] deep from o['Z']:
        the extremes of its 8 corners' projections."""
        near, far, left, right = 1 / o['Z'], 1 / (o['Z'] + o['len']), o['X'] - o['w'] / 2, o['X'] + o['w'] / 2
        top, bottom = CAM_H - o['y0'] - o['h'], CAM_H - o['y0']          # heights below the camera
        xs, ys = (left * near, left * far, right * near, right * far), (top * near, top * far, bottom * near, bottom * far)
        return [self.vx + FOCAL * min(xs), self.yh + FOCAL * min(ys), self.vx + FOCAL * max(xs), self.yh + FOCAL * max(ys)]


def fractal(rng, h, w, cells):
    """Smooth noise with std 1: random grids of each cell size (px), bicubic-upsampled and summed."""
    out = np.zeros((h, w), np.float32)
    for c in cells:
        g = rng.standard_normal((h // c + 3, w // c + 3)).astype(np.float32)
        up = np.asarray(Image.fromarray(g, 'F').resize((g.shape[1] * c, g.shape[0] * c), Image.BICUBIC))
        out += up[c:c + h, c:c + w] * c ** 0.5                     # coarse octaves weigh more
    return out / out.std()


@functools.lru_cache(maxsize=None)
def textures():
    """Noise fields that frames crop or sample: made once per process from a fixed seed, so a frame's pixels depend
    on its own seed only. ground: (2, 1024, 1024) shading of asphalt and pavement over 102.4 m ahead (0.1 m rows,
    tiled) by 51.2 m across (0.05 m columns); the rest are screen-sized (2 RH, 2 RW) fields."""
    rng = np.random.default_rng(12345)
    X = (np.arange(1024) - 512) * 0.05
    wheel = np.abs(np.abs((X + LANE_W / 2) % LANE_W - LANE_W / 2) - 0.85) < 0.3       # worn tracks in every lane
    marks = Image.new('L', (1024, 1024))                                # codes into SHADES: 0 is bare asphalt
    d = ImageDraw.Draw(marks)
    for _ in range(30):                                                 # repaired patches, darker or lighter
        x, z, a, b = rng.uniform(0, 1024), rng.uniform(0, 1024), rng.uniform(15, 80), rng.uniform(8, 40)
        d.rectangle([x, z, x + a, z + b], fill=int(rng.integers(1, 3)))
    for _ in range(60):                                                 # cracks: random walks
        p = rng.uniform(0, 1024, 2)
        pts = [tuple(p := p + rng.normal(0, 6, 2)) for _ in range(int(rng.integers(5, 25)))]
        d.line(pts, fill=3, width=int(rng.integers(1, 3)))
    for _ in range(6):
        x, z = rng.uniform(0, 1024, 2)
        d.ellipse([x, z, x + 14, z + 7], fill=4)                        # manholes
    asphalt = 0.05 * fractal(rng, 1024, 1024, (4, 16, 64)) - 0.06 * wheel + np.array([0, -0.12, 0.08, -0.3, -0.12])[np.asarray(marks)]
    Z = np.arange(1024)[:, None] * 0.1
    joints = ((Z % 1.5) < 0.08) | ((X[None] % 1.5) < 0.06)             # pavement slabs
    pave = 0.04 * fractal(rng, 1024, 1024, (8, 32)) - 0.12 * joints
    H, W = 2 * RH, 2 * RW
    rain = Image.new('L', (W, H))
    d = ImageDraw.Draw(rain)
    for _ in range(1400):                                               # streaks slant with the wind
        x, y, n = rng.uniform(0, W), rng.uniform(0, H), rng.uniform(8, 30)
        d.line([(x, y), (x - 0.2 * n, y + n)], fill=int(rng.uniform(20, 70)), width=1)
    flakes = (rng.random((H, W)) < 0.004) * rng.uniform(100, 230, (H, W))
    r2 = ((np.mgrid[0:RH, 0:RW] - np.array([RH / 2, RW / 2])[:, None, None]) ** 2).sum(0) / RW ** 2     # (RH, RW)
    grey = lambda v: np.repeat(np.asarray(v, np.float32)[..., None], 3, 2)                  # (..., 3) channels alike
    wave = 0.6 + 0.4 * np.sin(np.arange(W) / RW * 6)                                     # (2 RW,)
    return {'ground': np.stack([asphalt, pave]).astype(np.float32).reshape(-1),          # flat: one take() a frame
            'cloud': fractal(rng, RH, RW, (4, 16, 64)),                # at the sky's half resolution
            'grain': [rng.normal(0, s, (H, W, 3)).astype(np.float32) for s in (2.5, 6)],
            'rainy': grey(rain), 'snowy': grey(np.maximum(flakes, np.roll(flakes, 1, 1))),
            'reflection': grey(np.outer(np.clip(np.arange(RH) / (0.5 * RH) - 1, 0, 1) ** 2, wave)),
            'vignette': [grey(1 - s * r2) for s in (0.0, 0.4, 0.9)]}


def crop(field, rng):
    """A random screen-sized window of a (2 RH, 2 RW, ...) texture."""
    y, x = int(rng.integers(0, RH)), int(rng.integers(0, RW))
    return field[y:y + RH, x:x + RW]

# -----------------------------------------------------------------------------
# a scene: layout and light, then labelled objects clear of the rules' unsure bands

LOOKS = {  # weather -> (sky at the top, sky at the horizon, cloud cover, ambient light, fog distance m)
    'clear': ((62, 118, 200), (178, 206, 236), 0.0, 1.0, 700), 'partly cloudy': ((70, 122, 196), (185, 208, 232), 0.5, 0.95, 600),
    'overcast': ((168, 173, 182), (208, 210, 214), 0.3, 0.8, 400), 'rainy': ((105, 110, 118), (152, 155, 160), 0.3, 0.65, 180),
    'snowy': ((176, 181, 190), (214, 216, 220), 0.3, 0.9, 160), 'foggy': ((188, 190, 194), (196, 198, 200), 0.0, 0.8, 45)}
TIME_LIGHT = {'daytime': (1.0, 1.0, 1.0), 'dawn/dusk': (0.8, 0.62, 0.55), 'night': (0.16, 0.16, 0.21)}


def sample_layout(rng):
    """Frame attributes, the light and the road's cross-section (X of lane edges, parking, sidewalks)."""
    # weather and time follow BDD's mix, except rain: x2 (8% -> 16%), so "Is it raining?" has enough yes to learn
    weather = str(rng.choice(['clear', 'partly cloudy', 'overcast', 'rainy', 'snowy', 'foggy', 'undefined'],
                             p=[0.3, 0.09, 0.11, 0.16, 0.12, 0.04, 0.18]))
    t = str(rng.choice(['daytime', 'dawn/dusk', 'night', 'undefined'], p=[0.54, 0.13, 0.32, 0.01]))
    scene = str(rng.choice(['city street', 'highway', 'residential', 'undefined'], p=[0.51, 0.21, 0.12, 0.16]))
    look = weather if weather != 'undefined' else str(rng.choice(['clear', 'partly cloudy', 'overcast']))
    setting = 'city street' if scene == 'undefined' else scene
    top, hor, cover, amb, fog = LOOKS[look]
    light = TIME_LIGHT['daytime' if t == 'undefined' else t]
    highway, res = setting == 'highway', setting == 'residential'
    nl = int(rng.integers(0, 3)) if not res else int(rng.integers(0, 2))
    nr = int(rng.integers(0, (5 if highway else 4) - nl)) if not res else 0
    busy = not highway and rng.random() < (0.1 if res else 0.35)       # a crowd on the walks: no parking to hide it
    park = [0.0 if highway or busy or rng.random() < 0.3 else 2.4 for _ in range(2)]
    left, right = -LANE_W / 2 - LANE_W * nl, LANE_W / 2 + LANE_W * nr
    L = {'timeofday': t, 'weather': weather, 'scene': scene, 'look': look, 'setting': setting, 'nl': nl, 'nr': nr,
         'oncoming': 0 if highway else int(rng.integers(0, nl + 1)), 'busy': busy, 'left': left, 'right': right, 'park': park,
         'curb': (left - park[0] - 0.3 * highway, right + park[1] + 0.3 * highway),
         'walk': 0.0 if highway else rng.uniform(2.0, 4.5), 'night': t == 'night',
         'dark': t in ('dawn/dusk', 'night'),                          # lamps and lights on; "undefined" is drawn as day
         'ambient': tuple(amb * c * rng.uniform(0.96, 1.04) for c in light), 'fog_dist': fog * rng.uniform(0.7, 1.4),
         'sky': (top, hor), 'cover': cover * rng.uniform(0.5, 1.5), 'density': rng.random() ** 0.7,
         # cameras sit at many pitches (BDD's car bottoms reach 0.40 H at p10, above the rules' horizon) and low mounts
         # see up to a third of dashboard; the rules keep their fixed camera, as on real frames
         'cam': Cam(RW / 2 + rng.uniform(-0.01, 0.01) * RW, (HORIZON + np.clip(rng.normal(0, 0.045), -0.1, 0.07)) * RH),
         'hood': rng.uniform(0.62, 0.94) * RH if rng.random() < 0.55 else RH + 1.0, 'lamps': [],
         'zoff': rng.uniform(0, 102.4)}
    if L['dark']:        # dusk and night: the sky darkens from the top, with city glow at the horizon
        k = 0.08 if L['night'] else 0.5
        L['sky'] = (shade(top, k * 0.5), (45, 36, 34) if L['night'] else (238, 150, 98))
    L['fog_rgb'] = tuple(int(0.45 * c + 0.55 * g) for c, g in zip(L['sky'][1], LOOKS[look][1]))   # haze: greyer than dusk
    near = rng.random() < 0.75                                          # near enough to read its lights
    L['cross'] = (rng.uniform(6, 20) if near else rng.uniform(20, 45)) if \
        rng.random() < {'city street': 0.9, 'residential': 0.5}.get(setting, 0.1) else None
    L['jam'] = not highway and rng.random() < 0.35
    return L


def beyond(L, side, d):
    """X of the point d metres beyond the curb on the left (side 0) or right (side 1) of the road."""
    return L['curb'][side] + (d if side else -d)


def crossing(L, rng, X, Z):
    """A vehicle crossing at (X, Z), placed only if it is wholly in view past the buildings: their faces run along
    the walks' outer edges and, but for highway walls, end at the cross street (L['cross']) or before it and start
    again 16 m or more beyond it, so the corner at L['cross'] bounds what is seen down the cross street."""
    v = vehicle(L, rng, X, Z, 0, False)
    k = Z / L['cross'] if L['setting'] != 'highway' and L['cross'] < Z < L['cross'] + 16 else 1
    seen = k * beyond(L, 0, L['walk']) <= X - v['w'] / 2 and X + v['w'] / 2 <= k * beyond(L, 1, L['walk'])
    return place(L, lambda: v, 1) if seen else None


def thing(kind, X, Z, w, h, rgb, y0=0.0, light='none', length=0.0, **style):
    """A labelled object: a w x h (x length deep) metre cuboid at X right and Z ahead, y0 off the ground."""
    return dict(kind=kind, X=X, Z=Z, w=w, h=h, y0=y0, rgb=rgb, light=light, len=length, **style)


def judge(o):
    """'sure' if the object is clear of the rules' unsure bands (size, close/far, lane edge), judged on the box the
    label will carry; 'anchored' if only its size is unsure and it is far, so it changes no answer provided a clearly
    visible object of its class (and light colour) is labelled too; else None, as for an object outside the frame or
    a lit light whose lit lamp is. Unlit lights and the classes no question names by their size alone (bicycles,
    motorcycles) are sure whenever they are far."""
    if o['seen'] is None:
        return None
    x1, y1, x2, y2 = o['seen']
    h, y = seen_size(np.array([o['seen']]), BOX_CLASSES.index(o['kind']), RW)[0] / RH, y2 / RH   # the size the rules read
    light = o['kind'] == 'traffic light'
    if light and o['light'] != 'none':
        cx, cy, r = lamp(o['box'], o['light'])
        if cy < r or not r <= cx <= RW - r:                             # its colour would be a guess
            return None
    lo, hi = (LIGHT_TINY, LIGHT_VISIBLE) if light else (TINY, VISIBLE)
    o['size'] = 'tiny' if h < lo - 0.004 else 'visible' if h >= hi + 0.004 else 'unsure'
    if FAR - 0.006 <= y < CLOSE + 0.006:
        return None
    u = abs((x1 + x2) / 2 - RW / 2) / (SLOPE * max(y2 - HORIZON * RH, 1e-3))   # the rules' fixed camera
    if y >= FAR and min(abs(u - 1), abs(u - 3)) <= LANE_MARGIN + 0.08:
        return None
    if o['size'] != 'unsure':
        return 'sure'
    if y >= FAR:
        return None
    asked = o['kind'] in EXIST_CLASS.values() or (light and o['light'] != 'none')
    return 'anchored' if asked else 'sure'


def place(L, make, tries=6):
    """make() -> a candidate at a random spot; the first one judge() accepts (with its box and verdict), or None."""
    for _ in range(tries):
        o = make()
        o['box'] = L['cam'].box(o)                       # the camera is fixed now: one box per object
        o['seen'] = seen_box(o, L['cam'])
        o['verdict'] = judge(o)
        if o['verdict']:
            return o
    return None


def sample_objects(L, rng):
    """Every candidate object of the frame: traffic, people, street furniture."""
    objs = sample_traffic(L, rng) + sample_people(L, rng) + sample_cycles(L, rng) + street_furniture(L, rng)
    return [o for o in objs if o]


def vehicle(L, rng, X, Z, heading, parked):
    """A vehicle whose rear (heading 1), front (-1) or side (0: crossing) faces us."""
    trucks = 0.16 if L['setting'] == 'highway' else 0.05
    p = [0.4, 0.15, 0.3, 0.15, 0, 0, 0] if parked else [0.36, 0.12, 0.26, 0.1, 0.7 * trucks, 0.3 * trucks, 0.04]
    kind = list(VEHICLES)[int(np.searchsorted(np.cumsum(p), rng.random() * sum(p)))]
    label, w, h, n = VEHICLES[kind][:4]
    rgb = pick(PAINT, rng, PAINT_P) if label == 'car' else pick([PAINT[i] for i in (0, 0, 3, 8, 5, 6)], rng)
    if heading == 0:   # crossing: its side is its face, as long as the vehicle, no depth
        return thing(label, X, Z, n, h, rgb, length=0.0, heading=0, type=kind, dir=1 if rng.random() < 0.5 else -1)
    return thing(label, X, Z, w * rng.uniform(0.96, 1.04), h * rng.uniform(0.95, 1.05), rgb, length=n,
                 heading=heading, type=kind, brake=bool(rng.random() < 0.3 and not parked),
                 tag=pick([(225, 225, 215), (230, 190, 60)], rng))


def sample_traffic(L, rng):
    """Vehicles lane by lane and parked along the curbs, near to far: in a jam every lane and curb is full from
    just ahead of us; otherwise the frame's density sets how near the first ones are and the gaps. A vehicle in an
    unsure band leaves a gap. Cars crossing at the intersection."""
    objs, dens, jam = [], L['density'], L['jam']
    rows = [(LANE_W * k, -1 if k < -L['nl'] + L['oncoming'] else 1, False) for k in range(-L['nl'], L['nr'] + 1)]
    rows += [(x, 1, True) for x, p in ((L['left'] - 1.2, L['park'][0]), (L['right'] + 1.2, L['park'][1])) if p]
    fill = rng.uniform(0.9, 1.0) if jam else rng.uniform(0.4, 1.0)
    for X, heading, parked in rows:
        Z = rng.uniform(5, 9) if jam else 6 + rng.exponential(2 + 25 * (1 - dens))
        while Z < (45 if parked else 90):                 # beyond, a car is under 8 px tall, and mostly hidden
            n = 4.7                                              # an empty spot is a car long
            if rng.random() < (fill if parked or jam else 0.35 + 0.65 * dens):
                v = vehicle(L, rng, X + rng.uniform(-0.15, 0.15) * (1 + 3 * (not parked)), Z, heading, parked)
                objs.append(place(L, lambda: v, tries=1))
                n = v['len']
            Z += n + (rng.uniform(0.6, 3.0) if parked else 1.5 + rng.exponential(1 + (1 - jam) * 40 * (1 - dens)))
    if L['cross'] is not None:                                          # crossing, and along the cross street
        for _ in range(int(rng.integers(0, 6))):
            X = rng.uniform(-14, 14) if rng.random() < 0.4 else pick((-1, 1), rng) * rng.uniform(10, 45)
            objs.append(crossing(L, rng, X, L['cross'] + rng.uniform(3, 13)))
    if L['setting'] == 'residential':                                   # in driveways
        for _ in range(int(rng.integers(0, 5))):
            side = int(rng.integers(2))
            X = beyond(L, side, L['walk'] + rng.uniform(2, 6))
            objs.append(place(L, lambda: vehicle(L, rng, X, rng.uniform(8, 80), 1, True), 1))
    return objs


def person(rng, X, Z, facing, y0=0.0, h=None):
    """A pedestrian (or, with y0 > 0, a seated rider): clothes, skin, hair and stride drawn once, here."""
    h = h or (rng.uniform(1.55, 1.9) if rng.random() < 0.9 else rng.uniform(1.1, 1.4))
    w = 0.68 if facing == 'side' else rng.uniform(0.5, 0.62)
    return thing('rider' if y0 else 'pedestrian', X, Z, w, h, pick(CLOTHES, rng), y0=y0, facing=facing,
                 legs=pick(CLOTHES[:4] + CLOTHES[5:7], rng), skin=pick(SKIN, rng),
                 hair=pick([(20, 16, 14), (60, 40, 25), (120, 90, 50), (150, 150, 150)], rng),
                 stride=rng.uniform(0, 1), bag=bool(rng.random() < 0.3))


def walker(L, rng, Z0, Z1):
    """A pedestrian on a sidewalk between depths Z0 and Z1, where that sidewalk is in view."""
    side = int(rng.integers(2))
    X = beyond(L, side, rng.uniform(0.3, L['walk'] - 0.2))
    Z = rng.uniform(max(Z0, min(1.5 * abs(X) + 0.5, Z1)), Z1)          # the image edge is at |X| = 0.7 Z
    return person(rng, X, Z, pick(('front', 'back', 'front', 'back', 'side'), rng))


def sample_people(L, rng):
    """Pedestrians on the sidewalks, near and far; now and then a crowd, or people crossing at the crosswalk."""
    if L['setting'] == 'highway':
        return []
    busy = L['busy']
    near = int(rng.integers(4, 17)) if busy else int(rng.choice(8, p=[.52, .13, .1, .08, .07, .05, .03, .02]))
    far = int(rng.poisson(3 + 3 * busy))
    objs = [place(L, lambda: walker(L, rng, *Zs)) for n, Zs in ((near, (4.5, 13)), (far, (22, 90))) for _ in range(n)]
    if L['cross'] is not None and rng.random() < 0.4:                   # crossing at the crosswalk
        a, b = L['curb']
        objs += [place(L, lambda: person(rng, rng.uniform(a, b), L['cross'] - rng.uniform(1, 3.5), 'side'))
                 for _ in range(int(rng.integers(1, 9)))]
    return objs


def sample_cycles(L, rng):
    """Cyclists and motorcyclists (vehicle and rider labelled apart, as in BDD), and bicycles parked on the walk."""
    objs = []
    for kind, p in (('bicycle', 0.22), ('motorcycle', 0.1)):
        if rng.random() < p:
            w, h = (0.6, 1.05) if kind == 'bicycle' else (0.8, 1.2)
            Zs = (5, 12) if rng.random() < 0.5 else (21, 60)
            make = lambda: thing(kind, rng.uniform(L['left'] + 0.4, L['right'] - 0.4), rng.uniform(*Zs), w, h,
                                 pick(PAINT, rng), facing='back')
            for _ in range(6):                                          # both must be clear of the bands
                ride = place(L, make, 1)
                rider = ride and place(L, lambda: dict(person(rng, ride['X'], ride['Z'] - 0.05, 'back', 0.15, 1.6), on=ride), 1)
                if rider:
                    objs += [ride, rider]
                    break
    if L['walk'] and rng.random() < 0.08:
        objs.append(place(L, lambda: thing('bicycle', beyond(L, 0, 0.6), rng.uniform(5, 40), 1.7, 1.0,
                                           pick(PAINT, rng), facing='side')))
    return objs


def street_furniture(L, rng):
    """Traffic lights at the intersection (one colour for every lit one; the cross street's from the side) and
    at the next one (too far to read), and signs on poles along the walks."""
    objs, Zc = [], L['cross']
    if Zc is not None and rng.random() < 0.9:
        colour, lamp = pick(('red', 'red', 'yellow', 'green', 'green'), rng), rng.uniform(1.0, 1.35)
        housing = pick([(30, 30, 26), (120, 110, 40)], rng)                 # black, or New York's yellow
        spots = [(rng.uniform(L['left'], L['right']), Zc + 1, 5.2), (beyond(L, 1, 0.6), Zc + 1, 2.6),
                 (rng.uniform(L['left'], L['right']), Zc + 18, 5.2), (beyond(L, 0, 0.6), Zc + 18, 2.6),
                 (rng.uniform(L['left'], L['right']), Zc + 18, 5.2)]
        for X, Z, y0 in [s for s in spots if rng.random() < 0.75]:
            objs.append(place(L, lambda: thing('traffic light', X, Z, 0.42 * lamp, lamp, housing, y0, colour), 1))
        for X in (beyond(L, 0, 1), beyond(L, 1, 1)):                    # the cross street's, seen edge-on: unlit
            objs.append(place(L, lambda: thing('traffic light', X, Zc + rng.uniform(16, 20), 0.25, lamp, (30, 30, 26), 2.8)))
        if rng.random() < 0.6:                                          # the next intersection, and its traffic
            Zn = Zc + rng.uniform(70, 120)
            for X in rng.uniform(L['left'], L['right'] + 2, int(rng.integers(1, 4))):
                objs.append(place(L, lambda: thing('traffic light', X, Zn, 0.4, 1.0, (30, 30, 26), 5.2,
                                                   pick(list(LIGHT_RGB), rng)), 1))
            for X in rng.uniform(-40, 40, int(rng.integers(0, 5))):
                objs.append(crossing(L, rng, X, Zn + rng.uniform(-6, 6)))
    for _ in range(int(rng.poisson({'city street': 7, 'residential': 4.5, 'highway': 3}[L['setting']]))):
        kind = pick(list(SIGNS), rng, SIGN_P)
        w, h = {'street': (0.9, 0.22), 'one way': (0.9, 0.3), 'speed': (0.6, 0.75)}.get(kind, (0.75, 0.75))
        k = rng.uniform(0.9, 1.3)
        if L['setting'] == 'highway' and rng.random() < 0.5:
            kind, w, h, k = 'street', rng.uniform(2.5, 4), rng.uniform(1.5, 2.2), 1     # a guide sign
        side = int(rng.random() < 0.65)
        X = beyond(L, side, rng.uniform(0.3, 1.0))
        objs.append(place(L, lambda: thing('traffic sign', X, 5 + 95 * rng.random() ** 2, w * k, h * k, SIGNS[kind],
                                           rng.uniform(1.2, 2.6), type=kind)))
    return objs


def settle(objs, L):
    """The objects to draw and label, among judged ones (so in the frame): above the hood's edge and less than
    two-thirds hidden by nearer ones (BDD labels what a person can see, much of it partly hidden); a size-unsure
    one only beside a visible one of its class and light colour; a rider and its vehicle together or not at all
    (no riderless bicycle in traffic). Dropping those hides nothing new, so what is left is still drawn exactly as
    labelled."""
    kept = cull([o for o in objs if o['seen'][3] < L['hood'] - 1], L['cam'])
    anchors = {(o['kind'], o['light']) for o in kept if o['size'] == 'visible'}
    kept = [o for o in kept if o['verdict'] != 'anchored' or (o['kind'], o['light']) in anchors]
    ids, rider_of = {id(o) for o in kept}, {id(o['on']): o for o in objs if 'on' in o}
    partner = lambda o: o.get('on', rider_of.get(id(o), o))             # its ride, its rider, or itself
    return [o for o in kept if id(partner(o)) in ids]


def silhouette(o, cam):
    """The polygons an object covers in the image: a vehicle's face toward us and its flank (a car's: around
    draw_flank's body and cabin, whose roof is shorter than the body); a person's reach (pose); else its box."""
    x1, y1, x2, y2 = o['box']
    if o['kind'] in ('pedestrian', 'rider'):
        cx, half = (x1 + x2) / 2, pose(o)[3] * (x2 - x1)
        x1, x2 = cx - half, cx + half
    if not o['len'] or abs(o['X']) <= o['w'] / 2:
        return [[(x1, y1), (x2, y1), (x2, y2), (x1, y2)]]
    xs, Z, n, h = o['X'] - math.copysign(o['w'] / 2, o['X']), o['Z'], o['len'], o['h']
    face = [cam(o['X'] + dx, y, Z) for dx, y in ((-o['w'] / 2, 0), (o['w'] / 2, 0), (o['w'] / 2, h), (-o['w'] / 2, h))]
    waist = VEHICLES[o['type']][4]                      # (height, length) shares along the flank
    flank = [(0, 0), (0, 1), (waist, 1), (1, ROOF[1]), (1, ROOF[0]), (waist, 0)] if o['kind'] == 'car' else \
        [(0, 0), (0, 1), (1, 1), (1, 0)]
    return [face, [cam(xs, v * h, Z + t * n) for v, t in flank]]


def in_frame(poly):
    """The part of a polygon [(x, y), ...] inside the frame: clipped by one frame edge after another."""
    for axis, edge, sign in ((0, 0, 1), (0, RW, -1), (1, 0, 1), (1, RH, -1)):
        out = []
        for p, q in zip(poly, poly[1:] + poly[:1]):                    # each side, p to q
            p_in, q_in = sign * (p[axis] - edge) >= 0, sign * (q[axis] - edge) >= 0
            if p_in:
                out.append(p)
            if p_in != q_in:                                            # it crosses the edge: keep the crossing
                t = (edge - p[axis]) / (q[axis] - p[axis])
                cut = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]
                cut[axis] = edge                                        # exactly: no -0.0 in a label
                out.append(tuple(cut))
        poly = out
    return poly


def seen_box(o, cam):
    """The box a labeller draws: around the part of the object's silhouette inside the frame (for a vehicle cut by
    the frame's edge, its bottom can lie well above that of its whole box); None if no part is."""
    pts = [p for poly in silhouette(o, cam) for p in in_frame(poly)]
    if not pts:
        return None
    xs, ys = zip(*pts)
    return [min(xs), min(ys), max(xs), max(ys)]


def cull(objs, cam):
    """Keep objects less than two-thirds hidden by the silhouettes of nearer ones (all but bicycles, whose frames
    hide next to nothing; a rider hides nothing of what it rides); -> far to near, the drawing order."""
    mask = Image.new('L', (RW // 2, RH // 2))           # half-resolution occupancy, near to far
    d = ImageDraw.Draw(mask)
    kept, riders = [], {}                               # riders: id(ride) -> the rider's silhouette, drawn after it
    for o in sorted(objs, key=lambda o: o['Z']):
        x1, y1, x2, y2 = (int(v / 2 + 0.5) for v in o['seen'])
        if x2 <= x1 or y2 <= y1:
            continue
        hidden = mask.crop((x1, y1, x2, y2)).histogram()[255] / ((x2 - x1) * (y2 - y1))
        if hidden < 2 / 3:
            kept.append(o)
            o['occluded'] = bool(hidden > 0.05)
            polys = silhouette(o, cam) if o['kind'] != 'bicycle' else []
            if 'on' in o:                                # the rider is nearer than its ride: hold it back
                riders[id(o['on'])], polys = polys, []
            for poly in polys + riders.pop(id(o), []):
                d.polygon([(x / 2, y / 2) for x, y in poly], fill=255)
    return kept[::-1]


# -----------------------------------------------------------------------------
# drawing the street: the sky and the ground's shading as numpy arrays, the rest with PIL, far to near

def tone(L, rgb, Z, k=1.0):
    """A surface's colour as the camera sees it at depth Z: shaded by k, lit by the ambient light, hazed by distance."""
    f = 1 - math.exp(-Z / L['fog_dist'])
    (a0, a1, a2), (g0, g1, g2), k = L['ambient'], L['fog_rgb'], k * (1 - f)
    return min(255, int(rgb[0] * k * a0 + g0 * f)), min(255, int(rgb[1] * k * a1 + g1 * f)), min(255, int(rgb[2] * k * a2 + g2 * f))


def glow(L, rgb, Z):
    """A light source: unshaded by the ambient light, and seen through haze from further than a surface."""
    f = 1 - math.exp(-Z / (2.5 * L['fog_dist']))
    return tuple(int(c * (1 - f) + g * f) for c, g in zip(rgb, L['fog_rgb']))


def markings(L, rng, X, Z):
    """Masks of white and yellow paint at ground points (X, Z): edge lines, dashed lanes (some dashes worn away),
    a double yellow line before oncoming lanes, and at the intersection a stop line and a crosswalk."""
    Zc, (a, b) = L['cross'], L['curb']
    white = np.abs(X - L['right'] + 0.12) < 0.08
    yellow = np.abs(X - L['left'] - 0.12) < 0.08
    if not (L['oncoming'] or L['setting'] == 'highway'):
        white, yellow = white | yellow, np.zeros_like(yellow)
    if L['nl'] + L['nr']:                                               # the nearest line between lanes
        k = np.clip(np.round((X - LANE_W / 2) / LANE_W), -L['nl'], L['nr'] - 1).astype(np.int64) + L['nl']
        off, centre = np.abs(X - LANE_W / 2 - LANE_W * (k - L['nl'])), L['oncoming'] - 1
        phase = (Z + rng.uniform(0, 12, 8).take(k)) / 12                # dash number (x.0 to x.25: paint)
        dash = phase.astype(np.int64)                                   # (float % is slow in numpy)
        kept = rng.random(64) > rng.uniform(0, 0.3)                     # worn dashes
        white |= (off < 0.07) & (phase - dash < 0.25) & kept.take(dash & 63) & (k != centre)
        yellow |= (k == centre) & (np.abs(off - 0.15) < 0.06)
    if Zc is not None:
        road = (Z < Zc - 4.5) | (Z > Zc + 16)
        white, yellow = white & road, yellow & road
        rows = slice(*np.searchsorted(-Z[:, 0], [-(Zc - 0.5), -(Zc - 5)]))  # Z falls down the rows
        Xr, Zr = X[rows], Z[rows]
        white[rows] |= (Zr < Zc - 4.5) & (Xr > L['left'] + LANE_W * L['oncoming']) & (Xr < L['right']) | \
            (Zr > Zc - 3.5) & (Xr > a) & (Xr < b) & ((Xr - a) % 1.1 < 0.55)   # stop line, crosswalk
    return white, yellow


def background(L, rng):
    """The sky (gradient, clouds) and the ground as functions of the ground point (X, Z) each pixel sees: verge,
    sidewalks, curbs, asphalt and its markings, textured in ground coordinates so that patches, cracks and wheel
    tracks shrink with distance like paint; pools of lamp light and our headlights at night; wet sheen; haze.
    Worked out on every other pixel, as the stored images are 2.5x smaller still."""
    cam, tex, Zc, (a, b) = L['cam'], textures(), L['cross'], L['curb']
    ys, xs = np.arange(1, RH, 2, dtype=np.float32)[:, None], np.arange(1, RW, 2, dtype=np.float32)[None]
    g0 = int(np.searchsorted(ys[:, 0], cam.yh, side='right'))                             # the first ground row
    dy = np.maximum(ys[g0:] - cam.yh, 0.5)                                                # (G, 1) px below horizon
    Z, X = FOCAL * CAM_H / dy, (xs - cam.vx) * CAM_H / dy                                # (G, 1), (G, RW/2) metres
    # nested strips, so their sum is the surface: 0 verge, 1 sidewalk, 2 curb (snow ploughed onto it), 3 asphalt,
    # (4 white, 5 yellow paint)
    snow = L['look'] == 'snowy'
    bank = 0.7 * snow * rng.random()
    surface = ((X > a - L['walk']) & (X < b + L['walk'])).astype(np.int8) + ((X > a - 0.2) & (X < b + 0.2)) + \
        ((X > a + bank) & (X < b - bank))
    if Zc is not None:
        surface = np.maximum(surface, 3 * ((Z > Zc) & (Z < Zc + 16)))                   # the cross street
    white, yellow = markings(L, rng, X, Z)
    surface = np.where(white, 4, np.where(yellow, 5, surface))
    g = rng.uniform(50, 100)
    L['asphalt'], wear = (g, g, g + rng.uniform(0, 6)), rng.uniform(0, 0.6)              # grey, never yellow
    worn = lambda rgb: [c * (1 - wear) + s * wear for c, s in zip(rgb, L['asphalt'])]
    verge = (222, 224, 228) if snow else {'residential': (86, 110, 60), 'highway': (102, 108, 76)}.get(L['setting'], (122, 120, 114))
    palette = np.array([tone(L, c, 0) for c in (verge, (218, 220, 224) if snow else (152, 150, 144), (226, 228, 232) if snow else (176, 174, 166),
                                                L['asphalt'], worn((228, 228, 222)), worn((222, 180, 40)))], np.float32)
    paved = (surface == 1) | (surface == 2)
    zi, xi = ((Z + L['zoff']) * 10).astype(np.int64) & 1023, np.clip(X * 20 + 512, 0, 1023).astype(np.int64)
    gain = 1 + tex['ground'].take(paved * 2 ** 20 + zi * 1024 + xi) * np.clip((60 - Z) / 40, 0, 1)   # fades before aliasing
    for lx, lz in L['lamps']:
        rows = slice(*np.searchsorted(-Z[:, 0], [-(lz + 12), -(lz - 12)]))                  # where the pool is
        gain[rows] *= 1 + 2.2 * np.exp(-((X[rows] - lx) ** 2 + (Z[rows] - lz) ** 2) / 40)
    if L['night']:
        gain *= 1 + 3.0 * np.exp(-(X / (1.2 + 0.12 * Z)) ** 2) * np.clip(1 - Z / 40, 0, 1)
    rain = L['look'] == 'rainy'
    wet, fog = 0.35 * np.clip(Z / 60, 0, 1) * rain, 1 - np.exp(-Z / L['fog_dist'])      # (G, 1): sheen, haze
    gain *= (1 - fog) * (1 - 0.25 * rain - wet)
    (top, hor), v = L['sky'], (ys[:g0] / cam.yh) ** 1.6                                   # (S, 1) sky gradient
    y, x = rng.integers(RH // 2), rng.integers(RW // 2)
    cloud = np.clip(tex['cloud'][y:y + g0, x:x + RW // 2] * 0.6 + 2.2 * L['cover'] - 1.2, 0, 1) * (L['cover'] > 0)
    puff = shade(hor, 0.5 if L['night'] else 1.08)

    def plane(k):                                        # plane by plane: numpy broadcasts over a trailing
        out = np.empty((RH // 2, RW // 2), np.float32)      # axis of 3 colours several times slower
        sky = top[k] * (1 - v) + hor[k] * v                                               # (S, 1)
        out[:g0] = sky + cloud * (puff[k] * (1 - 0.3 * v) - sky)                          # clouds darker below
        out[g0:] = palette[:, k].take(surface) * gain + (fog * L['fog_rgb'][k] + (1 - fog) * wet * hor[k])
        return out
    rgb = [Image.fromarray(np.clip(plane(k), 0, 255).astype(np.uint8)) for k in range(3)]
    return Image.merge('RGB', rgb).resize((RW, RH), Image.NEAREST)


def facade(d, L, rng, X, Z1, Z2, hb, side, rgb):
    """A building's face along the road at X from Z1 to Z2, hb tall, with floors of windows over a shopfront, and
    its end wall facing us at Z1; at night some windows are lit."""
    cam, zm = L['cam'], (Z1 + Z2) / 2
    P = lambda y, z: cam(X, y, z)
    d.polygon([cam(X, 0, Z1), cam(X + side * 14, 0, Z1), cam(X + side * 14, hb, Z1), P(hb, Z1)], fill=tone(L, rgb, Z1, 0.95))
    d.polygon([P(0, Z1), P(0, Z2), P(hb, Z2), P(hb, Z1)], fill=tone(L, rgb, zm, 0.75))
    if Z1 > 80:                                                         # windows there are under two pixels
        return
    glass, lit = tone(L, (58, 66, 80), zm), glow(L, (255, 212, 140), zm)
    floors = np.arange(3.8, hb - 1.4, 3.3)
    for y in floors:
        d.polygon([P(y, Z1), P(y, Z2), P(y + 1.7, Z2), P(y + 1.7, Z1)], fill=glass)
    step = rng.uniform(1.8, 3.2)
    for z in np.arange(Z1 + 0.6, Z2 - 0.6, step) if Z1 < 30 else []:     # piers between the windows, if wide enough
        d.polygon([P(3.6, z), P(3.6, z + 0.7), P(hb - 1.2, z + 0.7), P(hb - 1.2, z)], fill=tone(L, rgb, z, 0.75))
    if L['dark']:
        for _ in range(int(rng.integers(0, 2 + len(floors)))):
            y, z = pick(floors, rng), Z1 + 0.7 + step * rng.integers(0, max(int((Z2 - Z1) / step) - 1, 1))
            d.polygon([P(y, z), P(y, z + step - 0.7), P(y + 1.7, z + step - 0.7), P(y + 1.7, z)], fill=lit)
    shop = glow(L, (190, 160, 110), zm) if L['dark'] and rng.random() < 0.35 else tone(L, (40, 46, 54), zm)
    d.polygon([P(0.4, Z1), P(0.4, Z2), P(2.9, Z2), P(2.9, Z1)], fill=shop)
    d.polygon([P(2.9, Z1), P(2.9, Z2), P(3.4, Z2), P(3.4, Z1)], fill=tone(L, pick(CLOTHES, rng), zm))   # awning


def house(d, L, rng, X, Z1, Z2, side, rgb):
    """A house set back from the road: walls, a gable facing us, a pitched roof, a few windows and a door."""
    cam, hb, roof = L['cam'], rng.uniform(4.5, 7.0), tone(L, pick([(70, 60, 58), (90, 50, 40), (60, 64, 70)], rng), Z1)
    d.polygon([cam(X, 0, Z1), cam(X + side * 9, 0, Z1), cam(X + side * 9, hb, Z1), cam(X, hb, Z1)], fill=tone(L, rgb, Z1))
    d.polygon([cam(X, hb, Z1), cam(X + side * 9, hb, Z1), cam(X + side * 4.5, hb + 3, Z1)], fill=tone(L, rgb, Z1, 0.9))
    d.polygon([cam(X, 0, Z1), cam(X, 0, Z2), cam(X, hb, Z2), cam(X, hb, Z1)], fill=tone(L, rgb, Z1, 0.75))
    d.polygon([cam(X, hb, Z1), cam(X, hb, Z2), cam(X + side * 4.5, hb + 3, Z2), cam(X + side * 4.5, hb + 3, Z1)], fill=roof)
    win = glow(L, (250, 205, 130), Z1) if L['night'] and rng.random() < 0.6 else tone(L, (52, 60, 72), Z1)
    for y in (1.0, 3.6)[:1 + (hb > 6)]:
        for z in np.arange(Z1 + 1.5, Z2 - 1.5, 3.5):
            d.polygon([cam(X, y, z), cam(X, y, z + 1.2), cam(X, y + 1.3, z + 1.2), cam(X, y + 1.3, z)], fill=win)


def draw_buildings(d, L, rng):
    """Beyond the sidewalks, far to near: facades (city), houses behind lawns (residential) or sound walls and tree
    lines (highway), leaving the cross street open; a hazy skyline ahead in the city."""
    cam, Zc = L['cam'], L['cross']
    if L['setting'] == 'city street':
        for x in np.sort(rng.uniform(-90, 90, 10)):
            hb, Zs = rng.uniform(20, 90), rng.uniform(250, 400)
            d.polygon([cam(x, 0, Zs), cam(x + rng.uniform(10, 30), 0, Zs), cam(x + 30, hb, Zs), cam(x, hb, Zs)],
                      fill=tone(L, pick(FACADES, rng), Zs, 0.6))
    for side, curb in ((-1, L['curb'][0]), (1, L['curb'][1])):
        X0 = curb + side * (L['walk'] + 0.2)
        if L['setting'] == 'highway':
            wall = rng.random() < 0.5
            X, h = X0 + side * (3 if wall else 9), 4.0 if wall else rng.uniform(6, 12)
            tops = [(z, h * (1 if wall else rng.uniform(0.6, 1.2))) for z in np.geomspace(4, 400, 40)]
            pts = [cam(X, 0, 4)] + [cam(X, y, z) for z, y in tops] + [cam(X, 0, 400)]
            d.polygon(pts, fill=tone(L, (150, 148, 140) if wall else (48, 72, 44), 60, 0.8))
            continue
        Z = 130.0                                        # the skyline and haze cover what is further
        while Z > 3:
            Z1 = Z - rng.uniform(12, 40)
            if Zc is None or Z < Zc or Z1 > Zc + 16:
                X = X0 + side * (rng.uniform(0.2, 2) if L['setting'] == 'city street' else rng.uniform(4, 10))
                if L['setting'] == 'city street':
                    facade(d, L, rng, X, max(Z1, 1.5), Z, rng.uniform(8, 45) if rng.random() < 0.8 else rng.uniform(45, 90),
                           side, pick(FACADES, rng))
                else:
                    house(d, L, rng, X, max(Z1, 1.5), Z - rng.uniform(2, 8), side, pick(FACADES, rng))
            Z = Z1 if Zc is None or not (Zc < Z1 < Zc + 16) else Zc


def sample_props(L, rng):
    """Trees, street lamps and utility poles along the outer edges of the walks: (kind, X, Z), far to near. Lamps
    are placed before the ground is shaded, which needs their pools of light."""
    props = []
    for side, curb in ((-1, L['curb'][0]), (1, L['curb'][1])):
        X = curb + side * (L['walk'] - 0.4 if L['walk'] else 1.5)
        for Z in rng.uniform(4, 100, int(rng.integers(2, 9))):
            kind = pick(('tree', 'lamp', 'pole'), rng, PROPS_P[L['setting']])
            props.append((kind, X, Z))
            if kind == 'lamp' and L['night'] and Z < 60:
                L['lamps'].append((X - side * 1.8, Z))
    return sorted(props, key=lambda p: -p[2])


def draw_props(d, L, rng, props):
    """Trees (bare in snow), lamps on arms over the road (lit after dark), wooden poles strung with wires."""
    cam, tops = L['cam'], {}
    for kind, X, Z in props:
        (x, y), s, toward = cam(X, 0, Z), FOCAL / Z, -math.copysign(1, X)
        if kind == 'tree':
            d.rectangle([x - 0.12 * s, cam(X, 2.8, Z)[1], x + 0.12 * s, y], fill=tone(L, (70, 54, 40), Z))
            leaves = [(44, 62, 36), (60, 86, 44), (96, 104, 52), (140, 96, 40)] if L['look'] != 'snowy' else [(88, 80, 76)]
            for _ in range(3):
                cx, cy = cam(X + rng.uniform(-1, 1), rng.uniform(3.5, 5.5), Z)
                r = rng.uniform(1.0, 1.9) * s
                d.ellipse([cx - r, cy - r, cx + r, cy + 0.8 * r], fill=tone(L, pick(leaves, rng), Z, rng.uniform(0.7, 1.1)))
        elif kind == 'lamp':
            head = cam(X + toward * 1.8, 8, Z)
            d.line([(x, y), cam(X, 8.2, Z), head], fill=tone(L, (110, 112, 116), Z), width=max(1, int(0.2 * s)))
            lamp = glow(L, (255, 224, 170), Z) if L['dark'] else tone(L, (190, 190, 186), Z)
            d.ellipse([head[0] - 0.3 * s, head[1] - 0.1 * s, head[0] + 0.3 * s, head[1] + 0.15 * s], fill=lamp)
        else:
            top = cam(X, 9, Z)
            d.line([(x, y), top], fill=tone(L, (96, 76, 58), Z), width=max(1, int(0.25 * s)))
            d.line([cam(X - 0.9, 8.5, Z), cam(X + 0.9, 8.5, Z)], fill=tone(L, (96, 76, 58), Z), width=max(1, int(0.12 * s)))
            if X in tops:
                for dy in (0, 0.5):
                    d.line([(top[0], top[1] + dy * s), (tops[X][0], tops[X][1] + dy * FOCAL / tops[X][2])],
                           fill=tone(L, (30, 30, 32), Z), width=1)
            tops[X] = (*top, Z)

# -----------------------------------------------------------------------------
# drawing the labelled objects, each strictly inside its box (its shadow and reflections lie on the road)

def draw_vehicle(d, o, L):
    """A vehicle: the flank we see in perspective, wheels, and the face toward us: rear (lights, window, plate),
    front (headlights, windscreen, grille), or for a crossing vehicle its whole side."""
    cam, X, Z, w, h = L['cam'], o['X'], o['Z'], o['w'], o['h']
    waist, roof = VEHICLES[o['type']][4:]
    car, bus, lit = o['kind'] == 'car', o['kind'] == 'bus', L['dark']
    paint = lambda k=1.0: tone(L, o['rgb'], Z, k)
    dark, glass = tone(L, (16, 16, 18), Z), tone(L, (46, 56, 70) if o['heading'] > 0 else (96, 110, 126), Z)
    x1, y1, x2, y2 = o['box']
    if o['heading'] == 0:
        x1, x2 = (x1, x2) if o['dir'] > 0 else (x2, x1)                # u runs from the rear (0) to the front (1)
    else:
        x1, x2 = cam.vx + FOCAL * (X - w / 2) / Z, cam.vx + FOCAL * (X + w / 2) / Z
    F = lambda u, v: (x1 + u * (x2 - x1), y2 - v * (y2 - y1 if o['heading'] == 0 else FOCAL * h / Z))
    poly = lambda pts, fill: d.polygon([F(u, v) for u, v in pts], fill=fill)
    if o['heading'] != 0 and abs(X) > w / 2:
        draw_flank(d, o, L, paint, dark, glass)
    if o['heading'] == 0:
        return draw_profile(o, L, poly, paint, dark, glass, lit)
    poly([(.03, 0), (.2, 0), (.2, .17), (.03, .17)], dark)                 # tyres
    poly([(.8, 0), (.97, 0), (.97, .17), (.8, .17)], dark)
    if car:
        poly([(0, .12), (1, .12), (1, waist - .05), (.96, waist), (.04, waist), (0, waist - .05)], paint())
        poly([(.05, waist), (.95, waist), (.5 + roof / 2, 1), (.5 - roof / 2, 1)], paint(0.93))
        poly([(.13, waist + .05), (.87, waist + .05), (.5 + roof / 2 - .05, .93), (.5 - roof / 2 + .05, .93)], glass)
        poly([(.03, waist - .07), (.97, waist - .07), (.97, waist - .03), (.03, waist - .03)], paint(1.15))   # shoulder
        poly([(0, .1), (1, .1), (1, .2), (0, .2)], paint(0.55))                                           # bumper
    else:
        poly([(0, .07 if bus else .2), (1, .07 if bus else .2), (1, 1), (0, 1)], paint())
        poly([(.05, .1), (.95, .1), (.95, .17), (.05, .17)], dark)                                        # underride bar
        if bus or o['heading'] < 0:
            poly([(.08, .6), (.92, .6), (.92, .9), (.08, .9)], glass)
        if o['heading'] > 0 and not bus:
            poly([(.49, .22), (.51, .22), (.51, .98), (.49, .98)], paint(0.6))                           # doors
    lamp_v = (waist - .16, waist - .05) if car else (.2, .3)
    if o['heading'] > 0:
        red = glow(L, (255, 40, 28), Z) if lit or o['brake'] else tone(L, (170, 22, 22), Z)
        for u in (0.01, 0.84):
            poly([(u, lamp_v[0]), (u + .15, lamp_v[0]), (u + .15, lamp_v[1]), (u, lamp_v[1])], red)
        poly([(.4, .2), (.6, .2), (.6, .3), (.4, .3)], tone(L, o['tag'], Z))                             # plate
    else:
        head = glow(L, (255, 250, 232), Z) if lit else tone(L, (214, 214, 208), Z)
        for u in (0.04, 0.78):
            poly([(u, lamp_v[0]), (u + .18, lamp_v[0]), (u + .18, lamp_v[1]), (u, lamp_v[1])], head)
        if car:
            poly([(.32, .22), (.68, .22), (.68, waist - .08), (.32, waist - .08)], dark)                 # grille


def draw_flank(d, o, L, paint, dark, glass):
    """The side of a vehicle ahead or oncoming that we see beside its face, running toward the vanishing point."""
    cam, X, Z, w, h, n = L['cam'], o['X'], o['Z'], o['w'], o['h'], o['len']
    waist, car, bus = VEHICLES[o['type']][4], o['kind'] == 'car', o['kind'] == 'bus'
    xs = X - math.copysign(w / 2, X)
    S = lambda v, t: cam(xs, v * h, Z + t * n)
    d.polygon([S(0.1, 0), S(0.1, 1), S(waist, 1), S(waist, 0)], fill=paint(0.68))
    d.polygon([S(waist, .22), S(waist, .85), S(1, ROOF[1]), S(1, ROOF[0])] if car else
              [S(waist, 0), S(waist, 1), S(1, 1), S(1, 0)], fill=paint(0.72))
    if car or bus:
        d.polygon([S(waist + .07, .3), S(waist + .07, .82), S(.9, .7), S(.9, .35)] if car else
                  [S(.55, .05), S(.55, .95), S(.85, .95), S(.85, .05)], fill=glass)
    for t in (0.17, 0.83):
        d.polygon([S((0.34 + 0.34 * math.sin(a)) / h, t + 0.34 * math.cos(a) / n) for a in np.arange(0, 6.3, 0.8)], fill=dark)


def draw_profile(o, L, poly, paint, dark, glass, lit):
    """A crossing vehicle's side, u from its rear (0) to its front (1): body, cabin and windows, wheels, lights."""
    waist = VEHICLES[o['type']][4]
    if o['kind'] == 'car':
        poly([(0, .15), (1, .15), (1, waist - .05), (.95, waist + .03), (.03, waist + .02), (0, waist - .05)], paint())
        poly([(.2, waist), (.84, waist), (.68, 1), (.3, 1)], paint(0.95))
        poly([(.25, waist + .05), (.78, waist + .05), (.65, .92), (.33, .92)], glass)
    elif o['kind'] == 'truck':
        poly([(0, .22), (.76, .22), (.76, 1), (0, 1)], paint())
        poly([(.78, .15), (1, .15), (1, .65), (.78, .8)], paint(0.8))
        poly([(.86, .5), (.98, .5), (.98, .62), (.86, .72)], glass)
    else:
        poly([(0, .1), (1, .1), (1, 1), (0, 1)], paint())
        for u in np.arange(.05, .9, .11):
            poly([(u, .55), (u + .09, .55), (u + .09, .88), (u, .88)], glass)
    r = 0.08 if o['kind'] == 'car' else 0.05
    for u in (0.17, 0.83):
        poly([(u + r * math.cos(a), (0.34 + 0.34 * math.sin(a)) / o['h']) for a in np.arange(0, 6.3, 0.7)], dark)
    poly([(0, .45), (.025, .45), (.025, .55), (0, .55)], glow(L, (255, 40, 28), o['Z']) if lit else tone(L, (170, 22, 22), o['Z']))
    poly([(.975, .45), (1, .45), (1, .55), (.975, .55)], glow(L, (255, 250, 232), o['Z']) if lit else tone(L, (214, 214, 208), o['Z']))


def pose(o):
    """A person's stride as shares of its box's width: the feet's offset from the middle, the torso's half-width, the
    arms' swing; and its reach, the half-width of what draw_person draws, which its label's box spans."""
    side = o['facing'] == 'side'
    st, body, swing = o['stride'] * (0.3 if side else 0.12), 0.2 if side else 0.3, (o['stride'] - 0.5) * 0.2
    return st, body, swing, max(body + 0.04, body + 0.08 + swing, st + 0.1)      # shoulder, hand, foot


def draw_person(d, o, L):
    """A pedestrian or rider: legs in stride, torso, swinging arms, head (hair from behind), perhaps a backpack."""
    x1, y1, x2, y2 = o['box']
    w, h, cx, Z = x2 - x1, y2 - y1, (x1 + x2) / 2, o['Z']
    c = lambda rgb, k=1.0: tone(L, rgb, Z, k)
    hip = y1 + (0.62 if o['kind'] == 'rider' else 0.52) * h
    st, body, swing, _ = pose(o)
    for s in (-1, 1):
        foot = cx + s * st * w
        d.polygon([(cx + s * 0.02 * w, hip), (cx + s * 0.17 * w, hip), (foot + 0.08 * w, y2 - 0.04 * h),
                   (foot - 0.08 * w, y2 - 0.04 * h)], fill=c(o['legs'], 0.9 + 0.1 * s))
        d.rectangle([foot - 0.1 * w, y2 - 0.045 * h, foot + 0.1 * w, y2], fill=c((24, 22, 22)))
        hand = cx + s * (body + 0.03 + swing) * w
        d.polygon([(cx + s * (body - 0.06) * w, y1 + 0.19 * h), (cx + s * (body + 0.04) * w, y1 + 0.2 * h),
                   (hand + s * 0.05 * w, y1 + 0.5 * h), (hand - s * 0.05 * w, y1 + 0.5 * h)], fill=c(o['rgb'], 0.8))
        d.ellipse([hand - 0.05 * w, y1 + 0.49 * h, hand + 0.05 * w, y1 + 0.54 * h], fill=c(o['skin']))
    d.polygon([(cx - body * w, y1 + 0.17 * h), (cx + body * w, y1 + 0.17 * h), (cx + (body - 0.06) * w, hip + 0.03 * h),
               (cx - (body - 0.06) * w, hip + 0.03 * h)], fill=c(o['rgb']))
    if o['bag'] and o['facing'] == 'back':
        d.rectangle([cx - 0.2 * w, y1 + 0.2 * h, cx + 0.2 * w, y1 + 0.42 * h], fill=c((40, 40, 44)))
    d.rectangle([cx - 0.06 * w, y1 + 0.12 * h, cx + 0.06 * w, y1 + 0.18 * h], fill=c(o['skin']))
    d.ellipse([cx - 0.15 * w, y1, cx + 0.15 * w, y1 + 0.14 * h], fill=c(o['hair'] if o['facing'] == 'back' else o['skin']))
    if o['facing'] != 'back':
        d.chord([cx - 0.15 * w, y1, cx + 0.15 * w, y1 + 0.1 * h], 180, 360, fill=c(o['hair']))


def draw_cycle(d, o, L):
    """A bicycle or motorcycle from behind (wheel edge-on, handlebar, tail light) or a bicycle from the side."""
    x1, y1, x2, y2 = o['box']
    w, h, cx, Z = x2 - x1, y2 - y1, (x1 + x2) / 2, o['Z']
    frame, dark, lw = tone(L, o['rgb'], Z), tone(L, (18, 18, 20), Z), max(1, int(w / 12))
    if o['facing'] == 'side':
        r = 0.2 * w
        for wx in (x1 + r, x2 - r):
            d.ellipse([wx - r, y2 - 2 * r, wx + r, y2], outline=dark, width=lw)
        d.line([(x1 + r, y2 - r), (cx, y2 - r), (x2 - r, y2 - r), (x2 - 1.3 * r, y1), (cx - 0.3 * r, y1 + 0.35 * h),
                (x1 + r, y2 - r)], fill=frame, width=lw)
        return
    moto = o['kind'] == 'motorcycle'
    t = 0.17 if moto else 0.06
    d.ellipse([cx - t * w, y1 + 0.4 * h, cx + t * w, y2], fill=dark)
    if moto:
        d.polygon([(cx - 0.32 * w, y1 + 0.25 * h), (cx + 0.32 * w, y1 + 0.25 * h), (cx + 0.25 * w, y1 + 0.65 * h),
                   (cx - 0.25 * w, y1 + 0.65 * h)], fill=frame)
    d.line([(x1, y1 + 0.06 * h), (x2, y1 + 0.06 * h)], fill=dark, width=lw)
    red = glow(L, (255, 40, 28), Z) if L['dark'] else tone(L, (170, 22, 22), Z)
    d.rectangle([cx - 0.1 * w, y1 + 0.3 * h, cx + 0.1 * w, y1 + 0.38 * h], fill=red)


def lamp(box, colour):
    """(centre x, centre y, radius) of a light's lamp of that colour in its box: red over yellow over green."""
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, y1 + (list(LIGHT_RGB).index(colour) + 0.5) * (y2 - y1) / 3, 0.36 * (x2 - x1)


def draw_light(d, o, L):
    """A traffic light: the housing, three lamps with the lit one bright; edge-on (unlit), the housing and visors."""
    (x1, y1, x2, y2), Z = o['box'], o['Z']
    w, h = x2 - x1, y2 - y1
    d.rectangle([x1, y1, x2, y2], fill=tone(L, o['rgb'], Z))
    if o['light'] == 'none':
        for k in range(3):
            d.line([(x1, y1 + (k + 0.2) * h / 3), (x2, y1 + (k + 0.35) * h / 3)], fill=tone(L, (12, 12, 12), Z), width=max(1, int(w / 4)))
        return
    for c in LIGHT_RGB:                                                 # one lit
        cx, cy, r = lamp(o['box'], c)
        fill = glow(L, LIGHT_RGB[c], Z) if o['light'] == c else tone(L, shade(LIGHT_RGB[c], 0.18), Z)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)


def draw_sign(d, o, L):
    """A sign: stop octagon, speed limit, warning diamond, street name, info, one way, or a sign's back."""
    (x1, y1, x2, y2), Z, kind = o['box'], o['Z'], o['type']
    w, h, cx, cy = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
    face, ink = tone(L, o['rgb'], Z), tone(L, (245, 245, 240) if kind in ('stop', 'street', 'info', 'one way') else (20, 20, 20), Z)
    if kind in ('stop', 'back'):
        pts = [(cx + 0.5 * w * math.cos(a), cy + 0.5 * h * math.sin(a)) for a in np.arange(np.pi / 8, 6.3, np.pi / 4)]
        d.polygon(pts, fill=face)
    elif kind == 'warning':
        d.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=face)
    else:
        d.rectangle([x1, y1, x2, y2], fill=face)
    if kind != 'back':                                                   # a line of lettering or a symbol
        d.rectangle([cx - 0.3 * w, cy - 0.08 * h, cx + 0.3 * w, cy + 0.08 * h], fill=ink)


def draw_under(d, o, L):
    """What goes with an object outside its box: a vehicle's shadow (sunny) or reflection (wet road, night) just in
    front of it, a sign's post, a traffic light's pole or the mast arm it hangs from."""
    cam, (x1, y1, x2, y2), Z = L['cam'], o['box'], o['Z']
    s, cx = FOCAL / Z, (x1 + x2) / 2
    if o['kind'] in ('car', 'truck', 'bus') and o['heading'] != 0:
        xa, xb = cam(o['X'] - o['w'] / 2, 0, Z)[0], cam(o['X'] + o['w'] / 2, 0, Z)[0]
        if L['look'] in ('rainy', 'snowy') or L['night']:
            d.polygon([(xa, y2), (xb, y2), (xb, y2 + 0.3 * s), (xa, y2 + 0.3 * s)], fill=tone(L, o['rgb'], Z, 0.2))
        elif L['look'] in ('clear', 'partly cloudy'):
            d.polygon([(xa - 0.05 * s, y2 - 1), (xb + 0.05 * s, y2 - 1), (xb, y2 + 0.06 * s), (xa, y2 + 0.06 * s)],
                      fill=tone(L, L['asphalt'], Z, 0.35))
    elif o['kind'] == 'traffic sign':
        d.line([(cx, y2), cam(o['X'], 0, Z)], fill=tone(L, (110, 112, 114), Z), width=max(1, int(0.08 * s)))
    elif o['kind'] == 'traffic light':
        metal, width = tone(L, (62, 64, 66), Z), max(1, int(0.15 * s))
        if o['y0'] > 4:                                                  # a mast arm from the right curb
            foot = cam(beyond(L, 1, 0.8), 0, Z)
            d.line([foot, (foot[0], y1 - 0.2 * s), (cx, y1 - 0.2 * s), (cx, y1)], fill=metal, width=width)
        else:
            d.line([(cx, y2), cam(o['X'], 0, Z)], fill=metal, width=width)


def draw_object(d, o, L):
    """The object itself, every pixel inside its box."""
    {'car': draw_vehicle, 'truck': draw_vehicle, 'bus': draw_vehicle, 'pedestrian': draw_person, 'rider': draw_person,
     'bicycle': draw_cycle, 'motorcycle': draw_cycle, 'traffic light': draw_light, 'traffic sign': draw_sign}[o['kind']](d, o, L)

# -----------------------------------------------------------------------------
# the hood, the weather between us and the street, and the camera

def draw_hood(d, L, rng):
    """The ego car's hood below L['hood'] (its edge bows down to the sides), a sheen of sky on it, and sometimes the
    dashboard in front of the camera."""
    y, bow = L['hood'], rng.uniform(8, 40)
    edge = [(x, y + bow * ((x - RW / 2) / (RW / 2)) ** 2) for x in range(0, RW + 1, 32)]
    d.polygon(edge + [(RW, RH), (0, RH)], fill=tone(L, pick(PAINT, rng, PAINT_P), 2, 0.6))
    d.line([(x, yy + 3) for x, yy in edge], fill=tone(L, L['sky'][1], 2, 0.45), width=int(rng.integers(2, 6)))
    if rng.random() < 0.5:
        top = rng.uniform(max(y + 12, 0.88 * RH), RH - 6)
        d.polygon([(0, top + rng.uniform(0, 15)), (RW, top + rng.uniform(0, 15)), (RW, RH), (0, RH)], fill=(14, 14, 16))


def raindrops(a, rng):
    """Drops on the windscreen, out of focus (the camera focuses on the street): soft discs, each a small lens that
    shows a blurred and brighter view of the scene inside a darker rim; what gives rain away in a dash-cam photo more
    often than streaks do. float (RH, RW, 3) -> the same."""
    lens = np.asarray(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(6)),
                      np.float32) * 1.15 + 12                                            # (RH, RW, 3)
    inside, rim = Image.new('L', (RW, RH)), Image.new('L', (RW, RH))
    di, dr = ImageDraw.Draw(inside), ImageDraw.Draw(rim)
    for _ in range(int(rng.integers(25, 160))):
        x, y, r = rng.uniform(0, RW), rng.uniform(0, RH), 2 + 10 * rng.random() ** 2     # mostly small ones
        dr.ellipse([x - r, y - 1.15 * r, x + r, y + 1.15 * r], fill=int(rng.uniform(60, 160)))
        di.ellipse([x - 0.75 * r, y - 0.9 * r, x + 0.75 * r, y + 0.9 * r], fill=int(rng.uniform(150, 255)))
    inside, rim = (np.asarray(m.filter(ImageFilter.GaussianBlur(1)), np.float32)[..., None] / 255 for m in (inside, rim))
    a = a * (1 - 0.4 * rim)                                                              # (RH, RW, 3)
    return a + (lens - a) * inside


def finish(img, L, rng):
    """Glare around lights, rain streaks or falling snow, a dashboard reflection on the windscreen, then the camera:
    blur, vignetting, sensor noise, exposure, white balance and contrast. -> the image to save."""
    tex, night = textures(), L['night']
    a = np.asarray(img, dtype=np.float32)                                                  # (RH, RW, 3)
    if night:                                                                              # bloom of bright lights
        small = Image.fromarray(np.clip((np.asarray(img.reduce(8), np.float32) - 110) * rng.uniform(1, 2.5), 0, 255)
                                .astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))     # (RH/8, RW/8, 3)
        a += np.asarray(small.resize((RW // 4, RH // 4), Image.BILINEAR), np.float32).repeat(4, 0).repeat(4, 1)
    if L['look'] in ('rainy', 'snowy') and rng.random() < 0.8:
        a += crop(tex[L['look']], rng) * rng.uniform(0.5, 1)
    if L['look'] == 'rainy' and rng.random() < 0.85:
        a = raindrops(a, rng)
    if L['hood'] < RH and rng.random() < 0.5:                                              # dashboard reflection
        x = int(rng.integers(RW))
        a += tex['reflection'][:, x:x + RW] * rng.uniform(10, 35)
    if rng.random() < 0.15:                                                                # focus and motion blur
        k, rows = rng.uniform(0.3, 0.9), a.reshape(RH, 3 * RW)                             # (RH, 3 RW) view
        rows[1:-1] = rows[1:-1] * (1 - k) + (rows[:-2] + rows[2:]) * (k / 2)
        rows[:, 3:-3] = rows[:, 3:-3] * (1 - k) + (rows[:, :-6] + rows[:, 6:]) * (k / 2)   # neighbours 3 apart
    a *= tex['vignette'][rng.integers(3)]
    a += crop(tex['grain'][night or rng.random() < 0.3], rng)                              # sensor noise: ISO
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    gain = rng.uniform(0.8, 1.6 if night else 1.25) * rng.uniform(0.94, 1.06, 3)          # exposure, white balance
    x, gamma = np.arange(256) / 255, rng.uniform(0.85, 1.15)
    return img.point(np.concatenate([np.clip(255 * (x * g) ** gamma, 0, 255) for g in gain]).astype(np.uint8).tolist())

# -----------------------------------------------------------------------------
# the tree: one JPEG and one 2018 label dict per frame

def compose(rng):
    """-> (RGB image, layout, labelled objects far to near) of one random frame."""
    L = sample_layout(rng)
    objs = settle(sample_objects(L, rng), L)
    props = sample_props(L, rng)
    img = background(L, rng)
    d = ImageDraw.Draw(img)
    draw_buildings(d, L, rng)
    draw_props(d, L, rng, props)
    for o in objs:
        draw_under(d, o, L)
        draw_object(d, o, L)
    if L['hood'] < RH:
        draw_hood(d, L, rng)
    return finish(img, L, rng), L, objs


def render_frame(job):
    """Worker: (root, bdd split, index, seed) -> the frame's 2018 label dict; writes its JPEG."""
    root, split, i, base_seed = job
    rng = np.random.default_rng([base_seed, ('train', 'val').index(split), i])
    digest = hashlib.md5(f'{base_seed}/{split}/{i}'.encode()).hexdigest()
    name = f'{digest[:8]}-{digest[8:16]}'
    img, L, objs = compose(rng)
    img.save(os.path.join(root, 'images', '100k', split, name + '.jpg'), quality=int(rng.integers(55, 93)))
    labels = []
    for k, o in enumerate(objs):
        box = o['seen']
        truncated = bool(box[0] <= 0 or box[1] <= 0 or box[2] >= RW or box[3] >= RH)
        labels.append({'category': NAMES_2018.get(o['kind'], o['kind']), 'id': k, 'manualShape': True,
                       'attributes': {'occluded': o['occluded'], 'truncated': truncated, 'trafficLightColor': o['light']},
                       'box2d': {c: round(float(v), 3) for c, v in zip(('x1', 'y1', 'x2', 'y2'), box)}})
    attrs = {k: L[k] for k in ('weather', 'scene', 'timeofday')}
    return {'name': name + '.jpg', 'attributes': attrs, 'timestamp': 10000, 'labels': labels}


def render_tree(root, seed, n_train, n_val, pool):
    """Render the synthetic BDD100K tree once (n_train frames into BDD's train, n_val into its val); reuse it
    when render.json matches. pool: anything with imap, e.g. prepare.make_pool(workers)."""
    # prepare.py's VERSION: a new prepare.py (new rule numbers, say) must re-render the world; so must any edit here
    spec = {'version': VERSION, 'world': SOURCE, 'seed': seed, 'train': n_train, 'val': n_val, 'size': [RW, RH]}
    done = os.path.join(root, 'render.json')
    if os.path.exists(done) and read_json(done) == spec:
        print(f"reusing the synthetic BDD100K tree in {root}")
        return
    tmp = fresh_tmp(root)
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
