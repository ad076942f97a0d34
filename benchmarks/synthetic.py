"""A generated MVTec AD-style texture category with small local defects and their masks.

    folder/train/good/NNN.png, folder/test/good/NNN.png,
    folder/test/<defect>/NNN.png, folder/ground_truth/<defect>/NNN_mask.png

Normal images are oriented stripes (a random phase, a small random angle) with pixel noise
(``write_texture_set``), or crops of a real photograph (``write_photo_crops``: training crops
from its upper three quarters, test crops from the rest); defects are a bright spot (a disc)
or a dark scratch (a thin line segment) covering about 1 % of the image, at a random place;
or, subtler (``SUBTLE_DEFECTS``, for photographs), a square of the texture turned by 90 degrees
('patch') and a blurred disc ('smudge'), which keep the image's intensities, so that the
distance to a mean image does not find them. Imported by the tests and the benchmarks; numpy
and Pillow only.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

DEFECTS = ("spot", "scratch")
SUBTLE_DEFECTS = ("patch", "smudge")


def texture(size, rng):
    """A normal image: stripes of period size/4 at a random phase and slight tilt, noisy."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(-0.2, 0.2)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / (size / 4) + phase)
    image = 0.5 + 0.25 * stripes + rng.normal(0, 0.03, (size, size))
    return np.clip(image, 0, 1)


def defect_mask(kind, size, rng):
    """The boolean mask of one defect of ``kind`` (about 1 % of the image) at a random place."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
    if kind == "patch":
        half = 0.1 * size
        return (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    if kind == "smudge":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (0.12 * size) ** 2
    if kind == "spot":
        radius = max(1.5, 0.06 * size)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    angle = rng.uniform(0, np.pi)
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (np.abs(across) <= max(0.6, 0.012 * size)) & (np.abs(along) <= 0.3 * size)


def with_defect(image, kind, mask):
    """``image`` with the defect drawn where ``mask`` is: bright spots, dark scratches, the
    texture inside a square turned by 90 degrees, or blurred inside a disc."""
    image = image.copy()
    if kind == "patch":
        rows, cols = np.nonzero(mask)
        side = min(np.ptp(rows), np.ptp(cols)) + 1
        square = (slice(rows.min(), rows.min() + side), slice(cols.min(), cols.min() + side))
        image[square] = np.rot90(image[square])
    elif kind == "smudge":
        pixels = Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), "L")
        blurred = np.asarray(pixels.filter(ImageFilter.GaussianBlur(2.5)), np.float32) / 255
        image[mask] = blurred[mask]
    else:
        image[mask] = 1.0 if kind == "spot" else 0.0
    return image


def visible_defect(image, kind, size, rng, contrast=0.05, tries=100):
    """(mask, image with the defect) at the first of ``tries`` random places where the defect
    changes the pixels under it by ``contrast`` on average (a turned patch of flat brick, say,
    would change nothing); the last place tried when none does."""
    for _ in range(tries):
        mask = defect_mask(kind, size, rng)
        drawn = with_defect(image, kind, mask)
        if np.abs(drawn - image)[mask].mean() >= contrast:
            break
    return mask, drawn


def save(array, path, mode):
    """Saves a [0, 1] array as an 8-bit PNG in ``mode`` ('L', or 'RGB' tinted)."""
    pixels = np.clip(np.rint(array * 255), 0, 255).astype(np.uint8)
    if mode == "RGB":
        pixels = np.stack([pixels, (pixels * 0.9).astype(np.uint8), (pixels * 0.7).astype(
            np.uint8)], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def write_texture_set(folder, size=32, train=64, test_good=16, test_defects=16, mode="L",
                      seed=0):
    """Writes the category into ``folder``; ``test_defects`` images of each defect type."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for index in range(train):
        save(texture(size, rng), folder / "train" / "good" / f"{index:03d}.png", mode)
    for index in range(test_good):
        save(texture(size, rng), folder / "test" / "good" / f"{index:03d}.png", mode)
    for kind in DEFECTS:
        for index in range(test_defects):
            mask = defect_mask(kind, size, rng)
            save(with_defect(texture(size, rng), kind, mask),
                 folder / "test" / kind / f"{index:03d}.png", mode)
            save(mask.astype(np.float32), folder / "ground_truth" / kind / f"{index:03d}_mask.png",
                 "L")
    return folder


def photo_crops(photo, size, count, rows, rng):
    """``count`` random ``size`` x ``size`` grayscale crops in [0, 1] of the Pillow image
    ``photo`` whose top edge lies in the fraction ``rows`` (low, high) of its height."""
    pixels = np.asarray(photo.convert("L"), np.float32) / 255.0
    height, width = pixels.shape
    tops = rng.integers(int(rows[0] * height), int(rows[1] * height) - size + 1, count)
    lefts = rng.integers(0, width - size + 1, count)
    return [pixels[top:top + size, left:left + size] for top, left in zip(tops, lefts)]


def write_photo_crops(folder, photo_path, size=64, train=720, test_good=40, test_defects=40,
                      seed=0, defects=DEFECTS):
    """Writes a category of crops of a photograph (e.g. a brick wall) into ``folder``:
    training crops from its upper three quarters, test crops (good, and with drawn defects)
    from its lowest quarter; ``test_defects`` images of each defect type."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    with Image.open(photo_path) as photo:
        photo.load()
    for index, crop in enumerate(photo_crops(photo, size, train, (0.0, 0.75), rng)):
        save(crop, folder / "train" / "good" / f"{index:03d}.png", "L")
    tests = iter(photo_crops(photo, size, test_good + len(defects) * test_defects, (0.75, 1.0),
                             rng))
    for index in range(test_good):
        save(next(tests), folder / "test" / "good" / f"{index:03d}.png", "L")
    for kind in defects:
        for index in range(test_defects):
            crop = next(tests)
            mask, drawn = visible_defect(crop, kind, size, rng)
            save(drawn, folder / "test" / kind / f"{index:03d}.png", "L")
            save(mask.astype(np.float32), folder / "ground_truth" / kind / f"{index:03d}_mask.png",
                 "L")
    return folder
