"""Image helpers: atomic writes and JSON, decoding (16-bit, float and transparent images
included) with the original's centre crop, ground-truth masks read as the images are, the
value-range helper ``rescale``, one-hot rows, image grids, and saving PNG grids and GIFs; and
``DataError``, for input that cannot be used.

It imports neither TensorFlow nor matplotlib; ``rescale`` and ``scale_pixels`` work on numpy
arrays and TensorFlow tensors alike.
"""

import contextlib
import io
import json
import math
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image


class DataError(Exception):
    """Input data that cannot be used; the message names the file or folder."""


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; renames it into place only on success.

    The temporary name is unique to this process and thread, so concurrent writers never share
    one, and costs no extra file creation (outputs are written by the ten thousand).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data):
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)



def json_safe(value):
    """``value`` with every NaN or infinite float replaced by None (valid JSON)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, value):
    """Writes ``value`` as indented, valid JSON (non-finite numbers as null), atomically."""
    write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")



GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def image_channels(path):
    """1 for a grayscale image file, 3 for anything else (converted to RGB)."""
    with Image.open(path) as image:
        return 1 if image.mode in GRAY_MODES else 3



def has_alpha(image):
    """Whether a Pillow image carries transparency."""
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def full_scale(mode, peak):
    """The value of a high-depth grayscale image that maps to 255: 65535 for 16-bit images
    (and 32-bit ones whose values fit 16 bits), 1 for float images in [0, 1], else 255 or the
    image's peak."""
    if mode.startswith("I;16") or 255.0 < peak <= 65535.0:
        return 65535.0
    if mode == "F" and peak <= 1.0:
        return 1.0
    return max(255.0, peak)


def eight_bit(image):
    """A Pillow image as 8 bits a channel without losing its content: 16- and 32-bit
    grayscale scaled by their range (0..65535 for 16 bits, not clipped at 255), float images by
    theirs, and transparency composited onto white."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, np.float64)
        top = full_scale(image.mode, float(values.max()) if values.size else 0.0)
        return Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8),
                               "L")
    if has_alpha(image):
        gray = image.mode in GRAY_MODES
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        composited = Image.alpha_composite(white, image.convert("RGBA"))
        return composited.convert("L" if gray else "RGB")
    return image


def center_crop_box(width, height, crop_w, crop_h):
    """The original's centre-crop box (left, top, right, bottom)."""
    left = round((width - crop_w) / 2.0)
    top = round((height - crop_h) / 2.0)
    return left, top, left + crop_w, top + crop_h


def prepared(image, path, input_size, output_size, crop, resample):
    """The Pillow ``image`` (read from ``path``) centre-cropped to ``input_size`` (h, w) with
    ``crop``, then resized to ``output_size`` with ``resample``; DataError when it is smaller
    than the crop."""
    if crop:
        crop_h, crop_w = input_size
        if image.width < crop_w or image.height < crop_h:
            raise DataError(f"{path}: image is {image.width}x{image.height}, smaller than "
                            f"the crop {crop_w}x{crop_h}")
        image = image.crop(center_crop_box(image.width, image.height, crop_w, crop_h))
    out_h, out_w = output_size
    return image if image.size == (out_w, out_h) else image.resize((out_w, out_h), resample)


def load_image(path, input_size, output_size, crop, channels, value_range=(-1.0, 1.0)):
    """Reads an image as float32 (h, w, c) in ``value_range``.

    With ``crop`` the centre ``input_size`` (h, w) is cut out before resizing to
    ``output_size``; without it the whole image is resized, as in the original.
    """
    with Image.open(path) as image:
        image = prepared(eight_bit(image).convert("L" if channels == 1 else "RGB"), path,
                         input_size, output_size, crop, Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32).reshape(*output_size, channels)
    return scale_pixels(array, value_range)


def scaled_size(width, height, scale):
    """An image's (h, w) at ``scale`` of its own resolution (rounded, at least 1 pixel)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def image_size(path, scale=1.0):
    """The (h, w) of the image file ``path`` at ``scale``, read from its header."""
    with Image.open(path) as image:
        return scaled_size(*image.size, scale)


def load_scaled_pixels(path, scale, channels):
    """An image at ``scale`` of its own resolution (bicubic), as uint8 (h, w, c) decoded as
    ``load_image`` does: the patch mode's images."""
    with Image.open(path) as image:
        image = eight_bit(image).convert("L" if channels == 1 else "RGB")
        size = scaled_size(*image.size, scale)
        if size != (image.height, image.width):
            image = image.resize(size[::-1], Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8).reshape(*size, channels)


def load_mask(path, spec, size=None):
    """A ground-truth mask as a boolean (h, w) array (defect where the mask is not 0: 0/255 and
    0/1 masks alike), by nearest neighbour: at ``size`` (h, w) when given (the patch mode's
    test image), else at the model's size, cropped as the images are; all False for ``path``
    None (a normal image)."""
    size = tuple(size or spec.output_size)
    if path is None:
        return np.zeros(size, bool)
    with Image.open(path) as image:
        image = image.convert("L")
        if spec.scale is None:
            image = prepared(image, path, spec.input_size, size, spec.crop, Image.NEAREST)
        elif (image.height, image.width) != size:
            image = image.resize(size[::-1], Image.NEAREST)
        return np.asarray(image) > 0


def rescale(values, value_range, target=(0.0, 1.0)):
    """``values`` (numpy or TensorFlow) mapped linearly from ``value_range`` onto ``target``;
    by default from the model's value range onto [0, 1], as images are saved and shown."""
    low, high = value_range
    new_low, new_high = target
    return (values - low) / (high - low) * (new_high - new_low) + new_low


def scale_pixels(pixels, value_range):
    """Maps float pixel values (numpy or TensorFlow) in [0, 255] to ``value_range``."""
    return rescale(pixels, (0.0, 255.0), value_range)



def one_hot(labels, depth):
    """One-hot float32 rows for integer ``labels``."""
    return np.eye(depth, dtype=np.float32)[np.asarray(labels, np.int64)]


def grid_shape(count):
    """Rows and columns of the original's image manifold for ``count`` images."""
    rows = math.floor(math.sqrt(count))
    cols = math.ceil(count / rows)
    return rows, cols


def merge(images, shape):
    """Tiles images (n, h, w, c) in [0, 1] into one (rows*h, cols*w, c) array."""
    images = np.asarray(images)
    rows, cols = shape
    count, height, width, channels = images.shape
    grid = np.zeros((rows * height, cols * width, channels), images.dtype)
    for index in range(min(count, rows * cols)):
        row, col = divmod(index, cols)
        grid[row * height:(row + 1) * height, col * width:(col + 1) * width] = images[index]
    return grid


def to_pixels(array):
    """uint8 pixels of a float array in [0, 1] (any shape)."""
    return np.clip(np.rint(np.asarray(array) * 255.0), 0, 255).astype(np.uint8)


def to_pil(pixels):
    """A Pillow image from (h, w, c) uint8 pixels (``to_pixels``)."""
    if pixels.shape[-1] == 1:
        return Image.fromarray(pixels[..., 0], "L")
    return Image.fromarray(pixels, "RGB")


def save_png(pixels, path):
    """Saves (h, w, c) uint8 pixels (``to_pixels``) as a PNG (fast zlib level 1), atomically."""
    encoded = io.BytesIO()
    to_pil(pixels).save(encoded, format="PNG", compress_level=1)
    write_bytes(path, encoded.getvalue())


def save_images(images, path, shape=None, value_range=(-1.0, 1.0)):
    """Saves a batch of images in ``value_range`` as one grid PNG."""
    images = rescale(np.asarray(images, np.float32), value_range)
    save_png(to_pixels(merge(images, shape or grid_shape(len(images)))), path)


def save_gif(frames, path, duration=2.0, value_range=(-1.0, 1.0)):
    """Saves frames (n, h, w, c) in ``value_range`` as an animated GIF lasting ``duration`` s."""
    images = [to_pil(to_pixels(rescale(np.asarray(frame), value_range))) for frame in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, int(1000 * duration / len(images))), loop=0)
