"""world.py: the synthetic renderer draws what it labels, and the same seed gives the same BDD100K tree."""
import os

import numpy as np
from PIL import Image

import world
from prepare import make_pool


def overlap(a, b):
    return min(a['x2'], b['x2']) > max(a['x1'], b['x1']) and min(a['y2'], b['y2']) > max(a['y1'], b['y1'])


def test_renderer_lit_colour_is_inside_the_light_box(tmp_path):
    for split in ('train', 'val'):
        os.makedirs(tmp_path / 'images' / '100k' / split)
    checked = 0
    for i in range(40):
        frame = world.render_frame((str(tmp_path), 'train', i, 3))
        img = np.asarray(Image.open(tmp_path / 'images' / '100k' / 'train' / frame['name']), dtype=np.float32)
        assert img.shape == (world.RH, world.RW, 3)
        assert frame['attributes']['timeofday'] in ('daytime', 'dawn/dusk', 'night')
        for k, lab in enumerate(frame['labels']):      # labels run far to near, as drawn
            b, colour = lab['box2d'], lab['attributes']['trafficLightColor']
            if lab['category'] != 'traffic light' or colour == 'none' or b['y2'] - b['y1'] < 20 or b['x1'] <= 0:
                continue
            if any(overlap(b, nearer['box2d']) for nearer in frame['labels'][k + 1:]):
                continue                                 # partly hidden by something nearer: lamps may be covered
            x1, y1, x2, y2 = (int(round(b[k])) for k in ('x1', 'y1', 'x2', 'y2'))
            thirds = [img[y1 + k * (y2 - y1) // 3: y1 + (k + 1) * (y2 - y1) // 3, x1:x2].mean((0, 1)) for k in range(3)]
            lit = int(np.argmax([t.sum() for t in thirds]))   # the bright lamp is the lit one
            assert ['red', 'yellow', 'green'][lit] == colour, f"frame {i}: {colour} light lit at lamp {lit}"
            rgb = thirds[lit]
            assert {'red': rgb[0] > rgb[2] + 40, 'yellow': rgb[0] > rgb[2] + 40 and rgb[1] > rgb[2] + 40,
                    'green': rgb[1] > rgb[0] + 20}[colour], f"frame {i}: lamp colour {rgb} is not {colour}"
            checked += 1
    assert checked >= 10


def test_renderer_boxes_cover_their_objects(tmp_path):
    """A labelled car's box is where its tail lights are: its lower half is much redder than the road beside it."""
    os.makedirs(tmp_path / 'images' / '100k' / 'train')
    seen = 0
    for i in range(30):
        frame = world.render_frame((str(tmp_path), 'train', i, 5))
        img = np.asarray(Image.open(tmp_path / 'images' / '100k' / 'train' / frame['name']), dtype=np.float32)
        for k, lab in enumerate(frame['labels']):
            b = lab['box2d']
            hidden = any(overlap(b, nearer['box2d']) for nearer in frame['labels'][k + 1:])
            if lab['category'] == 'car' and b['y2'] - b['y1'] > 40 and not lab['attributes']['truncated'] and not hidden:
                x1, y1, x2, y2 = (int(round(b[k])) for k in ('x1', 'y1', 'x2', 'y2'))
                rows = img[y1 + (y2 - y1) * 6 // 10: y1 + (y2 - y1) * 8 // 10, x1:x2]
                redness = (rows[..., 0] - rows[..., 1:].mean(-1)).max()
                assert redness > 60, f"frame {i}: no tail light inside car box {b}"
                seen += 1
    assert seen >= 10


def test_same_seed_renders_a_byte_identical_tree(tmp_path):
    """Every JPEG, labels file and render.json, whatever the worker count."""
    trees = [str(tmp_path / f'run{workers}') for workers in (1, 2)]
    for root, workers in zip(trees, (1, 2)):
        with make_pool(workers) as pool:
            world.render_tree(root, seed=7, n_train=6, n_val=3, pool=pool)
    files = [sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs) for root in trees]
    assert files[0] == files[1] and sum(f.endswith('.jpg') for f in files[0]) == 9
    assert {'render.json', os.path.join('labels', 'bdd100k_labels_images_val.json')} <= set(files[0])
    for f in files[0]:
        assert open(os.path.join(trees[0], f), 'rb').read() == open(os.path.join(trees[1], f), 'rb').read(), f
