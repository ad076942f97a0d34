"""Image I/O (Pillow), crops and scaling, MNIST idx files, image grids and atomic writes."""

import contextlib
import gzip
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """Input data that cannot be used; the message names the file or folder."""


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; renames it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def list_images(folder, pattern):
    """Sorted files under ``folder`` (recursively) whose names match ``pattern``."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.rglob(pattern) if p.is_file()
                  and not p.name.startswith("."))


def image_channels(path):
    """1 for a grayscale image file, 3 for anything else (converted to RGB)."""
    with Image.open(path) as image:
        return 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3


def center_crop_box(width, height, crop_w, crop_h):
    """The original's centre-crop box (left, top, right, bottom)."""
    left = round((width - crop_w) / 2.0)
    top = round((height - crop_h) / 2.0)
    return left, top, left + crop_w, top + crop_h


def load_image(path, input_size, output_size, crop, channels):
    """Reads an image as float32 (h, w, c) in [-1, 1].

    With ``crop`` the centre ``input_size`` (h, w) is cut out before resizing to
    ``output_size``; without it the whole image is resized, as in the original.
    """
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if crop:
            crop_h, crop_w = input_size
            if image.width < crop_w or image.height < crop_h:
                raise DataError(f"{path}: image is {image.width}x{image.height}, smaller than "
                                f"the crop {crop_w}x{crop_h}")
            image = image.crop(center_crop_box(image.width, image.height, crop_w, crop_h))
        out_h, out_w = output_size
        if image.size != (out_w, out_h):
            image = image.resize((out_w, out_h), Image.BICUBIC)
        array = np.asarray(image, dtype=np.float32).reshape(out_h, out_w, channels)
    return transform(array)


def transform(pixels):
    """Maps pixel values in [0, 255] to [-1, 1]."""
    return np.asarray(pixels, np.float32) / 127.5 - 1.0


def inverse_transform(images):
    """Maps [-1, 1] back to [0, 1]."""
    return (np.asarray(images) + 1.0) / 2.0


def find_mnist_file(folder, name):
    """The path of an idx file in ``folder``, plain or gzipped."""
    for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{Path(folder) / name}(.gz) not found: run `python download.py mnist`")


def read_idx(path):
    """Reads an idx file (plain or .gz) into a uint8 numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read idx file ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(shape):
        raise DataError(f"{path}: truncated idx file (expected shape {shape})")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def load_mnist(folder, split):
    """MNIST ``split`` ('train' or 'test') as uint8 images (n, 28, 28, 1) and int labels."""
    image_name, label_name = MNIST_FILES[split]
    images = read_idx(find_mnist_file(folder, image_name))
    labels = read_idx(find_mnist_file(folder, label_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: MNIST {split} images and labels do not match")
    return images[..., None], labels.astype(np.int64)


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


def to_pil(array):
    """A Pillow image from an (h, w, c) float array in [0, 1]."""
    pixels = np.clip(np.rint(np.asarray(array) * 255.0), 0, 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        return Image.fromarray(pixels[..., 0], "L")
    return Image.fromarray(pixels, "RGB")


def save_png(array, path):
    """Saves an (h, w, c) float array in [0, 1] as a PNG, atomically."""
    with atomic_path(path) as tmp:
        to_pil(array).save(tmp, format="PNG")


def save_images(images, path, shape=None, value_range=(-1.0, 1.0)):
    """Saves a batch of images in ``value_range`` as one grid PNG."""
    low, high = value_range
    images = (np.asarray(images, np.float32) - low) / (high - low)
    save_png(merge(images, shape or grid_shape(len(images))), path)


def save_gif(frames, path, duration=2.0, value_range=(-1.0, 1.0)):
    """Saves frames (n, h, w, c) in ``value_range`` as an animated GIF lasting ``duration`` s."""
    low, high = value_range
    images = [to_pil((np.asarray(frame) - low) / (high - low)) for frame in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, int(1000 * duration / len(images))), loop=0)


# Input sources and the tf.data pipeline ---------------------------------------------------------

@dataclass
class ImageSource:
    """Images to train on or to score: files on disk, or uint8 arrays in memory.

    ``labels`` are ints (class digits for MNIST, 0 normal / 1 anomalous for test folders,
    -1 unknown) or None.
    """

    names: list
    channels: int
    files: list = None
    arrays: np.ndarray = None
    labels: np.ndarray = None

    def __len__(self):
        return len(self.names)

    def subset(self, indices):
        """The images at ``indices``, in that order."""
        indices = np.asarray(indices, np.int64)
        return ImageSource(
            names=[self.names[i] for i in indices], channels=self.channels,
            files=None if self.files is None else [self.files[i] for i in indices],
            arrays=None if self.arrays is None else self.arrays[indices],
            labels=None if self.labels is None else self.labels[indices])


@dataclass(frozen=True)
class ImageSpec:
    """How images become model inputs: crop, size and value range."""

    input_size: tuple
    output_size: tuple
    crop: bool = False
    value_range: tuple = (-1.0, 1.0)


def folder_source(folder, pattern):
    """All images matching ``pattern`` under ``folder``; c_dim from the first one."""
    files = list_images(folder, pattern)
    if not files:
        raise DataError(f"no images matching '{pattern}' in {folder}")
    return ImageSource(names=[os.path.relpath(f, folder) for f in files],
                       channels=image_channels(files[0]), files=files)


def mnist_source(folder, split, digits=None):
    """The MNIST ``split``, keeping only ``digits`` when given."""
    images, labels = load_mnist(folder, split)
    if digits is not None:
        keep = np.isin(labels, list(digits))
        images, labels = images[keep], labels[keep]
    return ImageSource(names=[f"{split}_{i:05d}" for i in range(len(labels))], channels=1,
                       arrays=images, labels=labels)


def _scale(pixels, value_range):
    """float pixels in [0, 255] -> ``value_range``."""
    low, high = value_range
    return pixels / 255.0 * (high - low) + low


def make_dataset(source, spec, batch_size, y_dim=0, shuffle_seed=None, drop_remainder=False):
    """A tf.data pipeline of (images, one-hot labels) batches from ``source``.

    Files are decoded in parallel with Pillow; arrays are resized in-graph when needed.
    Labels are (batch, y_dim) one-hot rows, zero columns for an unconditional model.
    """
    count = len(source)
    labels = np.zeros(count, np.int64) if source.labels is None else source.labels
    y_rows = one_hot(np.clip(labels, 0, None), y_dim) if y_dim else np.zeros((count, 0), np.float32)
    height, width = spec.output_size
    channels = source.channels
    if source.files is not None:
        def decode(path):
            image = load_image(path.decode(), spec.input_size, spec.output_size, spec.crop,
                               channels)
            return _scale((image + 1.0) * 127.5, spec.value_range).astype(np.float32)

        def load(path, y):
            image = tf.numpy_function(decode, [path], tf.float32, stateful=False)
            return tf.ensure_shape(image, (height, width, channels)), y

        dataset = tf.data.Dataset.from_tensor_slices((source.files, y_rows))
    else:
        def load(pixels, y):
            image = tf.cast(pixels, tf.float32)
            if tuple(pixels.shape[:2]) != (height, width):
                image = tf.image.resize(image, (height, width), method="bicubic")
            return _scale(image, spec.value_range), y

        dataset = tf.data.Dataset.from_tensor_slices((source.arrays, y_rows))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def split_holdout(source, seed):
    """Splits off a reproducible slice of normal images that training never sees.

    The slice (a tenth, at most 256 images, none for fewer than 20) calibrates the automatic
    anomaly threshold when the test images carry no labels.
    """
    count = len(source) // 10 if len(source) >= 20 else 0
    order = np.random.default_rng(seed).permutation(len(source))
    held = np.sort(order[:min(count, 256)])
    kept = np.setdiff1d(np.arange(len(source)), held)
    return source.subset(kept), source.subset(held)
