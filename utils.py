"""Image I/O (Pillow), crops and scaling, MNIST idx files, image grids and atomic writes."""

import contextlib
import csv
import gzip
import heapq
import io
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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


def has_utf8_name(path):
    """Whether ``path`` is valid UTF-8 (names that are not cannot be written to scores.csv)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_named(paths):
    """``paths`` without those whose names are not valid UTF-8, with a warning counting them."""
    kept = [p for p in paths if has_utf8_name(p)]
    if len(kept) < len(paths):
        example = next(p for p in paths if not has_utf8_name(p))
        print(f"warning: skipped {len(paths) - len(kept)} file(s) whose names are not valid "
              f"UTF-8, e.g. {os.fsencode(example)!r}: rename them", file=sys.stderr)
    return kept


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


def list_images(folder, pattern):
    """Sorted files under ``folder`` (recursively) whose names match ``pattern``."""
    folder = Path(folder)
    return sorted(str(p) for p in utf8_named([p for p in folder.rglob(pattern)
                                              if p.is_file() and not p.name.startswith(".")]))


GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def image_channels(path):
    """1 for a grayscale image file, 3 for anything else (converted to RGB)."""
    with Image.open(path) as image:
        return 1 if image.mode in GRAY_MODES else 3


def first_channels(files):
    """``image_channels`` of the first of ``files`` that opens; DataError when none does."""
    problems = []
    for path in files:
        try:
            return image_channels(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            problems.append(f"{path}: {error}")
    raise DataError(f"none of the {len(files)} images opens, e.g. {problems[0]}")


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


def load_mask(path, spec):
    """A ground-truth mask as a boolean (h, w) array at the model's size (defect where the
    mask is not 0: 0/255 and 0/1 masks alike): cropped as the images are, resized by nearest
    neighbour; all False for ``path`` None (a normal image)."""
    if path is None:
        return np.zeros(spec.output_size, bool)
    with Image.open(path) as image:
        mask = prepared(image.convert("L"), path, spec.input_size, spec.output_size, spec.crop,
                        Image.NEAREST)
        return np.asarray(mask) > 0


def scale_pixels(pixels, value_range):
    """Maps float pixel values (numpy or TensorFlow) in [0, 255] to ``value_range``."""
    low, high = value_range
    return pixels / 255.0 * (high - low) + low


def mnist_files_present(folder):
    """Whether ``folder`` holds all four MNIST idx files (plain or gzipped)."""
    return all((Path(folder) / name).is_file() or (Path(folder) / f"{name}.gz").is_file()
               for names in MNIST_FILES.values() for name in names)


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
    low, high = value_range
    images = (np.asarray(images, np.float32) - low) / (high - low)
    save_png(to_pixels(merge(images, shape or grid_shape(len(images)))), path)


def save_gif(frames, path, duration=2.0, value_range=(-1.0, 1.0)):
    """Saves frames (n, h, w, c) in ``value_range`` as an animated GIF lasting ``duration`` s."""
    low, high = value_range
    images = [to_pil(to_pixels((np.asarray(frame) - low) / (high - low))) for frame in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, int(1000 * duration / len(images))), loop=0)


# Input sources and the tf.data pipeline ---------------------------------------------------------

@dataclass
class ImageSource:
    """Images to train on or to score: files on disk, or uint8 arrays in memory.

    ``classes`` are MNIST digits (the condition of a class-conditional model) or None;
    ``labels`` are anomaly labels (0 normal, 1 anomalous, -1 unknown) or None; ``masks`` the
    ground-truth mask file of each image (None: all normal), or None when there are none.
    """

    names: list
    channels: int
    files: list = None
    arrays: np.ndarray = None
    classes: np.ndarray = None
    labels: np.ndarray = None
    masks: list = None

    def __len__(self):
        return len(self.names)

    def subset(self, indices):
        """The images at ``indices``, in that order."""
        indices = np.asarray(indices, np.int64)
        return ImageSource(
            names=[self.names[i] for i in indices], channels=self.channels,
            files=None if self.files is None else [self.files[i] for i in indices],
            arrays=None if self.arrays is None else self.arrays[indices],
            classes=None if self.classes is None else self.classes[indices],
            labels=None if self.labels is None else self.labels[indices],
            masks=None if self.masks is None else [self.masks[i] for i in indices])


@dataclass(frozen=True)
class ImageSpec:
    """How images become model inputs: crop, size and value range."""

    input_size: tuple
    output_size: tuple
    crop: bool = False
    value_range: tuple = (-1.0, 1.0)


def folder_source(folder, pattern, crop_size=None, check=True):
    """All images matching ``pattern`` under ``folder``; c_dim from the first one.

    With ``check`` (the default) images that cannot be decoded are dropped first.
    """
    files = list_images(folder, pattern)
    if not files:
        raise DataError(f"no images matching '{pattern}' in {folder}: put images there or run "
                        "`python download.py <dataset>` (mnist, celebA, lsun)")
    if check:
        files = readable_images(files, crop_size)
    return ImageSource(names=[os.path.relpath(f, folder) for f in files],
                       channels=first_channels(files), files=files)


def image_problem(path):
    """None when Pillow decodes ``path`` completely, else why not; its (w, h) size; and
    whether it is transparent."""
    try:
        with Image.open(path) as image:
            image.load()
            return None, image.size, has_alpha(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__, None, False


def readable_images(files, crop_size=None):
    """``files`` without those that cannot be decoded, with a warning that counts them.

    Raises DataError when none is readable, or when one is smaller than ``crop_size`` (h, w).
    """
    with ThreadPoolExecutor(max_workers=4) as pool:
        checks = list(tqdm(pool.map(image_problem, files), total=len(files), unit="image",
                           desc="checking images", disable=len(files) < 2000, leave=False))
    bad = [(f, problem) for f, (problem, _, _) in zip(files, checks) if problem]
    if len(bad) == len(files):
        raise DataError(f"none of the {len(files)} images can be read, e.g. {bad[0][0]}: "
                        f"{bad[0][1]}")
    if bad:
        print(f"warning: skipped {len(bad)} of {len(files)} images that cannot be read, e.g. "
              f"{bad[0][0]}: {bad[0][1]}", file=sys.stderr)
    transparent = [f for f, (problem, _, alpha) in zip(files, checks) if alpha and not problem]
    if transparent:
        print(f"warning: {len(transparent)} of {len(files)} images are transparent, e.g. "
              f"{transparent[0]}: composited onto white", file=sys.stderr)
    good = [(f, size) for f, (problem, size, _) in zip(files, checks) if not problem]
    if crop_size is not None:
        crop_h, crop_w = crop_size
        small = [(f, size) for f, size in good if size[0] < crop_w or size[1] < crop_h]
        if small:
            (path, (width, height)) = small[0]
            raise DataError(f"{path}: image is {width}x{height}, smaller than the crop "
                            f"{crop_w}x{crop_h} ({len(small)} such images): lower "
                            "--input_height/--input_width or drop --crop")
    return [f for f, _ in good]


def mnist_source(folder, split, digits=None):
    """The MNIST ``split``, keeping only ``digits`` when given."""
    images, labels = load_mnist(folder, split)
    if digits is not None:
        keep = np.isin(labels, list(digits))
        images, labels = images[keep], labels[keep]
    return ImageSource(names=[f"{split}_{i:05d}" for i in range(len(labels))], channels=1,
                       arrays=images, classes=labels)


def make_dataset(source, spec, batch_size, y_dim=0, shuffle_seed=None, drop_remainder=False):
    """A tf.data pipeline of (images, one-hot labels) batches from ``source``.

    Files are decoded in parallel with Pillow; arrays are resized in-graph when needed.
    Labels are (batch, y_dim) one-hot rows of ``source.classes``; they have zero columns for
    an unconditional model, or when the classes are unknown.

    tf.data's autotuner is off (parallel calls then stay at the number of cores, at most 16):
    its thread sleeps in doubling periods, and deleting an iterator waits for the current one to
    end, which held the end of scoring 10,000 MNIST images for up to 38 s.
    """
    count = len(source)
    if y_dim and source.classes is not None:
        y_rows = one_hot(source.classes, y_dim)
    else:
        y_rows = np.zeros((count, 0), np.float32)
    height, width = spec.output_size
    channels = source.channels
    if source.files is not None:
        def decode(path):
            return load_image(path.decode(), spec.input_size, spec.output_size, spec.crop,
                              channels, spec.value_range)

        def load(path, y):
            image = tf.numpy_function(decode, [path], tf.float32, stateful=False)
            return tf.ensure_shape(image, (height, width, channels)), y

        dataset = tf.data.Dataset.from_tensor_slices((source.files, y_rows))
    else:
        def load(pixels, y):
            image = tf.cast(pixels, tf.float32)
            if tuple(pixels.shape[:2]) != (height, width):
                image = tf.image.resize(image, (height, width), method="bicubic")
            return scale_pixels(image, spec.value_range), y

        dataset = tf.data.Dataset.from_tensor_slices((source.arrays, y_rows))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(1)
    return dataset.with_options(options)


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


# Anomaly test sources -------------------------------------------------------------------------

NORMAL_FOLDERS = ("normal", "good")


def is_mvtec_folder(folder):
    """Whether ``folder`` is laid out as an MVTec AD category: train/good/ and test/."""
    return (Path(folder) / "train" / "good").is_dir() and (Path(folder) / "test").is_dir()


RESULT_MARKERS = ("metrics.json", "scores.csv", ".scores.partial.csv")


def is_result_folder(folder):
    """Whether ``folder`` holds an earlier anomaly test's results (never scored as input),
    renamed or not: its summary files, or its AD_error_ images."""
    folder = Path(folder)
    return (any((folder / marker).exists() for marker in RESULT_MARKERS)
            or next(folder.glob("AD_error_*.png"), None) is not None)


def test_folder_source(test_dir, exclude, channels, crop_size=None, mask_dir=None):
    """Images under ``test_dir`` (not under ``exclude`` or earlier result folders).

    A first folder named normal/good gives label 0, any other folder 1, and images directly
    in ``test_dir`` are unlabelled (-1). Images are read with the model's ``channels``. With a
    ``mask_dir`` laid out as MVTec AD's ground_truth/ (``<defect>/<stem>_mask.png``), each
    image gets its mask (None for normal images and those without one).
    """
    test_dir, exclude = Path(test_dir), Path(exclude).resolve()
    if not test_dir.is_dir():
        raise DataError(f"test folder {test_dir} not found")
    files = []

    def unreadable(error):
        raise DataError(f"cannot read {error.filename}: {error.strerror}")

    for folder, subfolders, names in os.walk(test_dir, onerror=unreadable):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                               and Path(folder, d).resolve() != exclude
                               and not is_result_folder(Path(folder, d)))
        files += [Path(folder, n) for n in names
                  if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not n.startswith(".")]
    if files:
        files = [Path(f) for f in readable_images(sorted(str(p) for p in files), crop_size)]
    names = [p.relative_to(test_dir).as_posix() for p in files]
    labels = [-1 if "/" not in name else
              0 if name.split("/")[0].lower() in NORMAL_FOLDERS else 1 for name in names]
    masks = None
    if mask_dir is not None and Path(mask_dir).is_dir():
        masks = usable_masks([mask_file(mask_dir, name) if label == 1 else None
                              for name, label in zip(names, labels)])
        masks = masks if any(masks) else None
    return ImageSource(names=names, channels=channels, files=[str(p) for p in files],
                       labels=np.asarray(labels, np.int64), masks=masks)


def file_source(path, channels, crop_size=None):
    """One image file to score, unlabelled; DataError when it cannot be decoded."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{path} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    files = readable_images([str(path)], crop_size)
    return ImageSource(names=[path.name], channels=channels, files=files,
                       labels=np.full(1, -1, np.int64))


def mask_problem(path):
    """Why a mask file cannot serve (unreadable, or no defect pixel), or None."""
    try:
        with Image.open(path) as image:
            if not np.asarray(image.convert("L")).any():
                return "has no defect pixel"
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return f"cannot be read ({error})"
    return None


def usable_masks(masks):
    """``masks`` with those that cannot serve replaced by None (their images are left out of
    the pixel-level AUC), each kind of problem in one warning line."""
    problems = {}
    for index, path in enumerate(masks):
        problem = path and mask_problem(path)
        if problem:
            problems.setdefault(problem.split(" (")[0], []).append(path)
            masks[index] = None
    for problem, paths in problems.items():
        print(f"warning: {len(paths)} mask(s) {problem}, e.g. {paths[0]}: their images are left "
              "out of the pixel-level ROC AUC", file=sys.stderr)
    return masks


def mask_file(mask_dir, name):
    """MVTec AD's ground-truth mask of test image ``name`` (``<defect>/<stem>.png``), or None."""
    path = Path(mask_dir) / Path(name).parent / f"{Path(name).stem}_mask.png"
    return str(path) if path.is_file() else None


def defect_type(name):
    """The first folder of a test image's relative name ('' for one directly in the folder)."""
    return name.split("/")[0] if "/" in name else ""


def mnist_test_source(folder, normal_class=None):
    """MNIST's test split: label 1 for digits outside ``normal_class``, else all normal.

    With ``normal_class`` the digits are not passed on as classes: a one-class model must not be
    told what it is to find (a conditional one is searched under its normal digits instead).
    """
    source = mnist_source(folder, "test")
    if normal_class is None:
        source.labels = np.zeros(len(source), np.int64)
        return source
    source.labels = np.where(np.isin(source.classes, list(normal_class)), 0, 1).astype(np.int64)
    source.classes = None
    return source


def limit_source(source, size, seed):
    """At most ``size`` images, drawn reproducibly (stratified by label), in input order."""
    if size is None or size >= len(source):
        return source
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(source), np.int64) if source.labels is None else source.labels
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    quotas = [len(group) * size / len(source) for group in groups]
    counts = np.floor(quotas).astype(int)
    for index in np.argsort([c - q for c, q in zip(counts, quotas)])[:size - counts.sum()]:
        counts[index] += 1
    chosen = np.concatenate([rng.choice(g, c, replace=False) for g, c in zip(groups, counts)])
    return source.subset(np.sort(chosen))


# Anomaly test outputs -------------------------------------------------------------------------

SCORE_COLUMNS = ("file", "label", "anomaly_score", "residual_loss", "discrimination_loss",
                 "is_anomaly")


def result_name(name):
    """A flat PNG file name for an input image's (relative) name."""
    return Path(name.replace("/", "_").replace("\\", "_")).stem + ".png"


def unique_result_names(names):
    """``result_name`` of each input, made distinct where two flatten alike (anomaly/000.png
    and anomaly_000.png; compared without case): later ones get a -2, -3, ... suffix."""
    seen, unique = set(), []
    for name in names:
        base = candidate = result_name(name)
        count = 1
        while candidate.lower() in seen:
            count += 1
            candidate = f"{Path(base).stem}-{count}.png"
        seen.add(candidate.lower())
        unique.append(candidate)
    return unique


def residual_map(images, fakes, value_range):
    """|x - G(z)| scaled to [0, 1], as the original's AD_error images."""
    low, high = value_range
    return np.abs(np.asarray(images) - np.asarray(fakes)) / (high - low)


def anomaly_maps(images, fakes, value_range):
    """The per-pixel residual |x - G(z)| averaged over channels, in [0, 1]: (n, h, w)."""
    return residual_map(images, fakes, value_range).mean(axis=-1)


class PixelROC:
    """ROC AUC over every pixel of every test image, streamed in flat memory.

    Per-pixel scores in [0, 1] are counted into ``bins`` equal bins, for defective and for
    normal pixels; pairs within one bin count as ties (half), so the AUC is exact at the bins'
    resolution (1/4096 of the range by default).
    """

    def __init__(self, bins=4096):
        self.bins = bins
        self.defective = np.zeros(bins, np.int64)
        self.normal = np.zeros(bins, np.int64)

    def add(self, maps, masks):
        """Counts the pixels of ``maps`` (n, h, w) in [0, 1] by their masks (n, h, w) bool."""
        index = np.clip((np.asarray(maps) * self.bins).astype(np.int64), 0, self.bins - 1)
        self.defective += np.bincount(index[masks], minlength=self.bins)
        self.normal += np.bincount(index[~masks], minlength=self.bins)

    def auc(self):
        """The ROC AUC, or None unless both kinds of pixel were seen."""
        defective, normal = self.defective.sum(), self.normal.sum()
        if not defective or not normal:
            return None
        below = np.cumsum(self.normal) - self.normal
        return float((self.defective * (below + 0.5 * self.normal)).sum()
                     / (float(defective) * float(normal)))


def heat_overlay(image, residual):
    """The input in gray with its residual in red on top (the paper's figure), in [0, 1]."""
    gray = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    heat = residual.mean(axis=-1, keepdims=True)
    heat = heat / max(float(heat.max()), 1e-8)
    red = np.concatenate([np.ones_like(heat), np.zeros_like(heat), np.zeros_like(heat)], -1)
    return gray * (1.0 - 0.7 * heat) + red * 0.7 * heat


class BackgroundWriter:
    """Runs writing jobs on one background thread, at most ``pending`` at a time.

    File writes overlap the next batch's computation; ``submit`` waits while ``pending`` jobs
    are queued (memory stays flat) and ``close`` waits for all and ends the thread. A failed
    job's error is raised by the next ``submit`` or ``close``.
    """

    def __init__(self, pending=2):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = pending
        self.jobs = []

    def submit(self, fn, *args):
        while len(self.jobs) >= self.pending:
            self.jobs.pop(0).result()
        self.jobs.append(self.pool.submit(fn, *args))

    def close(self):
        try:
            while self.jobs:
                self.jobs.pop(0).result()
        finally:
            self.pool.shutdown()


class AnomalyReport:
    """Writes the anomaly test's outputs as batches arrive, and its summary at the end.

    Everything is written into a hidden staging folder beside ``result_dir``, which replaces
    ``result_dir`` whole at the end: a run's results appear together or not at all. Per image
    it writes the original's AD_/AD_error_ PNGs at once (distinct names even where two inputs'
    flattened names are alike); scores go to a partial CSV as they come, and ``finish`` writes
    scores.csv (with ``is_anomaly``), metrics.json and the plots, then publishes the folder.
    When the source has ground-truth masks, ``mask_spec`` (the images' ``ImageSpec``) reads
    them batch by batch for the pixel-level ROC AUC. Memory stays flat: only scalars, final z,
    pixel histograms and the few worst images for the overview are kept.
    """

    def __init__(self, result_dir, source, value_range, overview_rows=8, mask_spec=None):
        self.final_dir = Path(result_dir)
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.final_dir.parent.glob(f".{self.final_dir.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.result_dir = Path(tempfile.mkdtemp(prefix=f".{self.final_dir.name}.partial-",
                                                dir=self.final_dir.parent))
        self.output_names = unique_result_names(source.names)
        self.images_written = BackgroundWriter()
        self.source, self.value_range, self.overview_rows = source, value_range, overview_rows
        self.mask_spec = mask_spec if source.masks is not None else None
        self.pixels = PixelROC()
        self.partial_path = self.result_dir / ".scores.partial.csv"
        self.partial = open(self.partial_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.partial_csv = csv.writer(self.partial)
        self.partial_csv.writerow(SCORE_COLUMNS[:-1])
        self.scores, self.residuals, self.discriminations, self.z = [], [], [], []
        self.worst = []
        self.threshold = None

    def __len__(self):
        return sum(len(s) for s in self.scores)

    def _unit(self, images):
        low, high = self.value_range
        return (np.asarray(images) - low) / (high - low)

    def add(self, images, result, maps=None):
        """Records one batch: its inputs (in the model's value range), ``SearchResult`` and
        anomaly maps of the final G(z) (``anomaly_maps``; computed when not given)."""
        start = len(self)
        names = self.source.names[start:start + len(images)]
        labels = self._labels()[start:start + len(images)]
        self.images_written.submit(self._save_images,
                                   self.output_names[start:start + len(images)],
                                   result.snapshots,
                                   {step: residual_map(images, fakes, self.value_range)
                                    for step, fakes in result.snapshots.items()})
        for row in zip(names, labels, result.score, result.residual, result.discrimination):
            self.partial_csv.writerow([row[0], "" if row[1] < 0 else int(row[1]),
                                       *(f"{v:.6g}" for v in row[2:])])
        self.partial.flush()
        self.scores.append(result.score)
        self.residuals.append(result.residual)
        self.discriminations.append(result.discrimination)
        self.z.append(result.z)
        final = result.final
        if self.mask_spec is not None:
            maps = anomaly_maps(images, final, self.value_range) if maps is None else maps
            masks = self.source.masks[start:start + len(images)]
            known = [m is not None or label == 0 for m, label in zip(masks, labels)]
            if any(known):
                self.pixels.add(maps[known], np.stack([load_mask(m, self.mask_spec)
                                                       for m, k in zip(masks, known) if k]))
        for offset, score in enumerate(result.score):
            score = float(score) if np.isfinite(score) else -np.inf
            entry = (score, start + offset, images[offset], final[offset])
            if len(self.worst) < self.overview_rows:
                heapq.heappush(self.worst, entry)
            elif score > self.worst[0][0]:
                heapq.heapreplace(self.worst, entry)

    def _save_images(self, names, snapshots, errors):
        """The original's AD_<step>_<name> (G(z)) and AD_error_<step>_<name> PNGs of a batch."""
        for step, fakes in snapshots.items():
            pixels = zip(names, to_pixels(self._unit(fakes)), to_pixels(errors[step]))
            for name, fake, error in pixels:
                save_png(fake, self.result_dir / f"AD_{step}_{name}")
                save_png(error, self.result_dir / f"AD_error_{step}_{name}")

    def _labels(self):
        if self.source.labels is None:
            return np.full(len(self.source), -1, np.int64)
        return self.source.labels

    def all_scores(self):
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)

    def normal_scores(self):
        """Scores of the images labelled normal."""
        labels = self._labels()[:len(self)]
        return self.all_scores()[labels == 0]

    def non_finite(self):
        """Names of images whose score is NaN or infinite."""
        return [self.source.names[i] for i in np.flatnonzero(~np.isfinite(self.all_scores()))]

    def finish(self, threshold, threshold_source, extra, tensorboard=None):
        """Writes scores.csv, metrics.json and the plots; returns the metrics.

        ``tensorboard``: (log_dir, step, name) to log the results there too (``log_results``).
        """
        self.images_written.close()
        self.partial.close()
        self.threshold = threshold
        scores = self.all_scores()
        labels = self._labels()[:len(scores)]
        flagged = scores > threshold
        rows = zip(self.source.names, labels, scores, np.concatenate(self.residuals),
                   np.concatenate(self.discriminations), flagged)
        with (atomic_path(self.result_dir / "scores.csv") as tmp,
              open(tmp, "w", newline="", encoding="utf-8") as handle):
            writer = csv.writer(handle)
            writer.writerow(SCORE_COLUMNS)
            for name, label, score, residual, discrimination, anomalous in rows:
                writer.writerow([name, "" if label < 0 else int(label), f"{score:.6g}",
                                 f"{residual:.6g}", f"{discrimination:.6g}", int(anomalous)])
        os.remove(self.partial_path)
        metrics = {"n": len(scores), "n_anomalous": int(flagged.sum()),
                   "n_labelled_anomalous": int((labels == 1).sum()),
                   **evaluate(scores, labels, flagged),
                   "pixel_roc_auc": self.pixels.auc(),
                   "per_type_roc_auc": per_type_roc_auc(self.source.names[:len(scores)], scores,
                                                        labels),
                   "threshold": float(threshold), "threshold_source": threshold_source,
                   **extra, "non_finite": self.non_finite()}
        write_json(self.result_dir / "metrics.json", metrics)
        self._plots(scores, labels, threshold, metrics)
        self._publish()
        if tensorboard is not None:
            log_dir, step, name = tensorboard
            try:
                log_results(log_dir, step, name, scores, labels, metrics,
                            self.result_dir / "overview.png")
            except (OSError, tf.errors.OpError) as error:
                print(f"warning: the results are in {self.result_dir}, but TensorBoard's copy "
                      f"could not be written to {log_dir} ({str(error).splitlines()[0]})",
                      file=sys.stderr)
        return metrics

    def _publish(self):
        """Replaces the results folder by the staging folder (two renames)."""
        old = self.final_dir.with_name(f".{self.final_dir.name}.old-{os.getpid()}")
        if self.final_dir.exists():
            os.replace(self.final_dir, old)
        os.replace(self.result_dir, self.final_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.result_dir = self.final_dir

    def rows(self):
        """(name, score, is_anomaly) of every scored image, once ``finish`` has run."""
        scores = self.all_scores()
        return list(zip(self.source.names, scores, scores > self.threshold))

    def _plots(self, scores, labels, threshold, metrics):
        plot_histogram(scores, labels, threshold, self.result_dir / "scores_hist.png")
        plot_overview(sorted(self.worst, reverse=True), self.source, self.value_range,
                      self.result_dir / "overview.png", self.mask_spec)
        known = labels >= 0
        if metrics["roc_auc"] is not None:
            plot_roc(scores[known], labels[known], metrics["roc_auc"],
                     self.result_dir / "roc.png")
        if known.sum() >= 5:
            plot_tsne(np.concatenate(self.z)[known], labels[known], self.result_dir / "tsne.png")


def log_results(log_dir, step, name, scores, labels, metrics, overview_path):
    """The anomaly test's results as TensorBoard summaries under ``test/<name>/``.

    Metrics as scalars, score histograms per label, the precision-recall curve (TensorBoard's
    pr_curve plugin; scores min-max scaled to [0, 1], which keeps their order) when both labels
    are known, and the overview grid as an image, at the model's training ``step``.
    """
    from tensorboard.plugins.pr_curve import summary as pr_curve

    prefix = f"test/{name}"
    finite = np.isfinite(scores)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=step):
        for key in ("roc_auc", "pr_auc", "f1", "threshold", "n_anomalous", "images_per_second"):
            if metrics.get(key) is not None:
                tf.summary.scalar(f"{prefix}/{key}", metrics[key])
        for value, (label_name, _) in LABEL_STYLES.items():
            chosen = scores[finite & (labels == value)]
            if len(chosen):
                tf.summary.histogram(f"{prefix}/scores_{label_name}", chosen)
        known = finite & (labels >= 0)
        if metrics.get("roc_auc") is not None:
            ranked = scores[known]
            unit = (ranked - ranked.min()) / max(float(ranked.max() - ranked.min()), 1e-12)
            summary = pr_curve.pb(prefix, labels[known].astype(bool), unit,
                                  num_thresholds=201)
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)
        with Image.open(overview_path) as image:
            tf.summary.image(f"{prefix}/overview", np.asarray(image.convert("RGB"))[None])
    writer.close()


def evaluate(scores, labels, flagged):
    """ROC AUC, PR AUC and F1 over the labelled images; None without both classes."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    known = (labels >= 0) & np.isfinite(scores)
    y, s = labels[known], scores[known]
    if len(np.unique(y)) < 2:
        return {"roc_auc": None, "pr_auc": None, "f1": None}
    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s)),
            "f1": float(f1_score(y, flagged[known]))}


def per_type_roc_auc(names, scores, labels):
    """Image-level ROC AUC of the normal images against each defect type (first folder), or
    None without both normal images and anomalous ones in named folders (MNIST's split has
    none)."""
    from sklearn.metrics import roc_auc_score

    types = np.array([defect_type(name) for name in names])
    finite = np.isfinite(scores)
    normal = finite & (labels == 0)
    defects = sorted(set(types[finite & (labels == 1)]) - {""})
    if not normal.any() or not defects:
        return None
    return {kind: float(roc_auc_score(labels[chosen], scores[chosen]))
            for kind in defects for chosen in [normal | (finite & (types == kind))]}


def save_figure(figure, path):
    """Saves a matplotlib figure as PNG atomically and closes it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


LABEL_STYLES = {0: ("normal", "tab:blue"), 1: ("anomalous", "tab:red"), -1: ("unlabelled", "gray")}


def plot_histogram(scores, labels, threshold, path):
    figure, axes = plt.subplots(figsize=(6, 4))
    finite = np.isfinite(scores)
    bins = np.histogram_bin_edges(scores[finite], bins=40) if finite.any() else 10
    for value, (name, color) in LABEL_STYLES.items():
        chosen = scores[(labels == value) & finite]
        if len(chosen):
            axes.hist(chosen, bins=bins, alpha=0.6, color=color, label=f"{name} ({len(chosen)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="anomaly score", ylabel="images", title="Anomaly scores")
    axes.legend()
    save_figure(figure, path)


def plot_roc(scores, labels, auc, path):
    from sklearn.metrics import roc_curve

    finite = np.isfinite(scores)
    fpr, tpr, _ = roc_curve(labels[finite], scores[finite])
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(fpr, tpr, color="tab:red", label=f"AUC {auc:.4f}")
    axes.plot([0, 1], [0, 1], color="gray", linestyle=":")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes.legend(loc="lower right")
    save_figure(figure, path)


def plot_tsne(z, labels, path, limit=1000, seed=0):
    """t-SNE of the final latent codes, coloured by label (at most ``limit`` points, drawn
    reproducibly: enough to see the structure, and seconds instead of tens of them)."""
    from sklearn.manifold import TSNE

    if len(z) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(z), limit, replace=False))
        z, labels = z[keep], labels[keep]
    finite = np.isfinite(z).all(axis=1)
    z, labels = z[finite], labels[finite]
    embedded = TSNE(2, perplexity=min(30.0, (len(z) - 1) / 3.0), init="pca",
                    random_state=seed).fit_transform(z)
    figure, axes = plt.subplots(figsize=(5, 5))
    for value, (name, color) in LABEL_STYLES.items():
        chosen = labels == value
        if chosen.any():
            axes.scatter(*embedded[chosen].T, s=8, color=color, label=name)
    axes.set(title="t-SNE of the final z (searched, or E(x))", xticks=[], yticks=[])
    axes.legend()
    save_figure(figure, path)


def plot_overview(worst, source, value_range, path, mask_spec=None):
    """Input | G(z) | residual heat map for the most anomalous images, worst first; with
    ``mask_spec``, each ground-truth mask's outline on the heat map."""
    low, high = value_range
    figure, axes = plt.subplots(len(worst), 3, figsize=(6, 2 * len(worst)), squeeze=False)
    for row, (score, index, image, fake) in zip(axes, worst):
        image, fake = (np.asarray(image) - low) / (high - low), (np.asarray(fake) - low) / (
            high - low)
        residual = residual_map(image, fake, (0.0, 1.0))
        panels = (image, fake, heat_overlay(image, residual))
        for axis, panel, title in zip(row, panels, ("input", "G(z)", "residual")):
            axis.imshow(np.clip(panel.squeeze(), 0, 1), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=8)
        mask = source.masks[index] if mask_spec is not None else None
        if mask is not None:
            row[2].contour(load_mask(mask, mask_spec), levels=[0.5], colors="cyan",
                           linewidths=0.8)
        row[0].set_ylabel(f"{source.names[index]}\nscore {score:.4g}", fontsize=7)
    save_figure(figure, path)
