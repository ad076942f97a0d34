"""The images a command reads, and how they reach the model.

What it owns: ``DataSpec``, the data the flags describe (resolved once: MNIST, a folder or an
MVTec AD-style folder; sizes and crop; the test folder, its masks and its results folder), with
the training images, their hold-out split and the test images; image sources (``ImageSource``:
files or MNIST arrays, with classes, labels and masks) and ``ImageSpec``; listing and checking
image folders; MNIST's idx files; the test folder's labels (normal/ or good/: 0, other folders:
1) and MVTec AD's ground-truth masks; recognising earlier result folders; and the ``tf.data``
pipeline. Decoding itself is in utils.py.
"""

import gzip
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

import download
import utils

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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


def list_images(folder, pattern):
    """Sorted files under ``folder`` (recursively) whose names match ``pattern``."""
    folder = Path(folder)
    return sorted(str(p) for p in utf8_named([p for p in folder.rglob(pattern)
                                              if p.is_file() and not p.name.startswith(".")]))


def first_channels(files):
    """``image_channels`` of the first of ``files`` that opens; DataError when none does."""
    problems = []
    for path in files:
        try:
            return utils.image_channels(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            problems.append(f"{path}: {error}")
    raise utils.DataError(f"none of the {len(files)} images opens, e.g. {problems[0]}")


def mnist_files_present(folder):
    """Whether ``folder`` holds all four MNIST idx files (plain or gzipped)."""
    return all((Path(folder) / name).is_file() or (Path(folder) / f"{name}.gz").is_file()
               for names in MNIST_FILES.values() for name in names)


def find_mnist_file(folder, name):
    """The path of an idx file in ``folder``, plain or gzipped."""
    for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise utils.DataError(f"{Path(folder) / name}(.gz) not found: run `python download.py mnist`")


def read_idx(path):
    """Reads an idx file (plain or .gz) into a uint8 numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise utils.DataError(f"{path}: cannot read idx file ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise utils.DataError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) != offset + math.prod(shape):
        raise utils.DataError(f"{path}: truncated idx file (expected shape {shape})")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def load_mnist(folder, split):
    """MNIST ``split`` ('train' or 'test') as uint8 images (n, 28, 28, 1) and int labels."""
    image_name, label_name = MNIST_FILES[split]
    images = read_idx(find_mnist_file(folder, image_name))
    labels = read_idx(find_mnist_file(folder, label_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise utils.DataError(f"{folder}: MNIST {split} images and labels do not match")
    return images[..., None], labels.astype(np.int64)


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
    """How images become model inputs: crop, size and value range; in patch mode (``scale``
    set) images keep their own resolution times ``scale`` and the model sees ``output_size``
    patches of them."""

    input_size: tuple
    output_size: tuple
    crop: bool = False
    value_range: tuple = (-1.0, 1.0)
    scale: float | None = None


def folder_source(folder, pattern, crop_size=None, check=True):
    """All images matching ``pattern`` under ``folder``; c_dim from the first one.

    With ``check`` (the default) images that cannot be decoded are dropped first.
    """
    files = list_images(folder, pattern)
    if not files:
        raise utils.DataError(f"no images matching '{pattern}' in {folder}: put images there or "
                              "run `python download.py <dataset>` (mnist, celebA, lsun)")
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
            return None, image.size, utils.has_alpha(image)
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
        raise utils.DataError(f"none of the {len(files)} images can be read, e.g. {bad[0][0]}: "
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
            raise utils.DataError(f"{path}: image is {width}x{height}, smaller than the crop "
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
        y_rows = utils.one_hot(source.classes, y_dim)
    else:
        y_rows = np.zeros((count, 0), np.float32)
    height, width = spec.output_size
    channels = source.channels
    if source.files is not None:
        def decode(path):
            return utils.load_image(path.decode(), spec.input_size, spec.output_size, spec.crop,
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
            return utils.scale_pixels(image, spec.value_range), y

        dataset = tf.data.Dataset.from_tensor_slices((source.arrays, y_rows))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(count, seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(1)
    return dataset.with_options(options)


def arrays(source, spec, y_dim=0, batch_size=256):
    """``source``'s model inputs and their one-hot labels (``make_dataset``) as two numpy
    arrays."""
    batches = list(make_dataset(source, spec, batch_size, y_dim=y_dim))
    return tuple(np.concatenate([batch[i].numpy() for batch in batches]) for i in range(2))


class PatchImages:
    """A folder's images at their own resolution times ``spec.scale``, held as uint8 in one
    flat buffer, from which ``dataset`` draws random ``spec.output_size`` patches (every patch
    position of every image equally likely)."""

    def __init__(self, source, spec):
        self.spec = spec
        self.channels = source.channels
        patch_h, patch_w = spec.output_size
        pixels = [utils.load_scaled_pixels(f, spec.scale, source.channels) for f in source.files]
        self.sizes = np.array([p.shape[:2] for p in pixels], np.int64)
        small = [(f, size) for f, size in zip(source.files, self.sizes)
                 if size[0] < patch_h or size[1] < patch_w]
        if small:
            path, (height, width) = small[0]
            raise utils.DataError(f"{path}: image is {width}x{height} at --image_scale "
                                  f"{spec.scale:g}, smaller than the {patch_w}x{patch_h} patch "
                                  f"({len(small)} such images): lower --patch_size or raise "
                                  "--image_scale")
        self.buffer = np.concatenate([p.reshape(-1) for p in pixels])
        areas = self.sizes[:, 0] * self.sizes[:, 1] * self.channels
        self.offsets = np.concatenate([[0], np.cumsum(areas)[:-1]])
        positions = (self.sizes[:, 0] - patch_h + 1) * (self.sizes[:, 1] - patch_w + 1)
        self.position_logits = np.log(positions.astype(np.float64))[None].astype(np.float32)

    @property
    def pixels(self):
        """The images' pixel count (at their scale)."""
        return int((self.sizes[:, 0] * self.sizes[:, 1]).sum())

    def patches_per_epoch(self):
        """As many patches as cover the images' area once (at least one)."""
        patch_h, patch_w = self.spec.output_size
        return max(1, math.ceil(self.pixels / (patch_h * patch_w)))

    def _patch(self, draw):
        """The patch of the random int64 ``draw``: an image by its positions, then a corner."""
        patch_h, patch_w = self.spec.output_size
        buffer, offsets = tf.constant(self.buffer), tf.constant(self.offsets)
        sizes, logits = tf.constant(self.sizes), tf.constant(self.position_logits)
        channels = self.channels

        def cut(value):
            image = tf.random.stateless_categorical(logits, 1, seed=tf.stack([value, 1]))[0, 0]
            height, width = sizes[image, 0], sizes[image, 1]
            top = tf.random.stateless_uniform([], tf.stack([value, 2]), 0, height - patch_h + 1,
                                              dtype=tf.int64)
            left = tf.random.stateless_uniform([], tf.stack([value, 3]), 0, width - patch_w + 1,
                                               dtype=tf.int64)
            start = offsets[image]
            pixels = tf.reshape(buffer[start:start + height * width * channels],
                                tf.stack([height, width, channels]))
            patch = tf.cast(pixels[top:top + patch_h, left:left + patch_w], tf.float32)
            return (utils.scale_pixels(tf.ensure_shape(patch, (patch_h, patch_w, channels)),
                                       self.spec.value_range), tf.zeros([0]))
        return cut(draw)

    def dataset(self, batch_size, seed, fresh=True):
        """An endless tf.data pipeline of (patches, empty labels) batches; with ``fresh`` each
        pass over it draws new patches, else the same ones again."""
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=fresh)
        options = tf.data.Options()
        options.autotune.enabled = False
        return (draws.map(self._patch, num_parallel_calls=tf.data.AUTOTUNE)
                .batch(batch_size, drop_remainder=True).prefetch(1).with_options(options))

    def arrays(self, count, seed):
        """``count`` patches drawn from ``seed`` and their empty labels, as numpy arrays."""
        batch = next(iter(self.dataset(count, seed, fresh=False)))
        return batch[0].numpy(), batch[1].numpy()


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
LABEL_NAMES = {0: "normal", 1: "anomalous", -1: "unlabelled"}
"""The test images' labels: 0 normal, 1 anomalous, -1 unknown."""


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
        raise utils.DataError(f"test folder {test_dir} not found")
    files = []

    def unreadable(error):
        raise utils.DataError(f"cannot read {error.filename}: {error.strerror}")

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
        raise utils.DataError(f"{path} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
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


# The data of one command ------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """Where a command's images come from and how they are cut, resolved once from its flags
    (``from_flags``): MNIST, a folder of images, or an MVTec AD-style folder (train/good/ and
    test/) to train on; the test folder (or image) to score, with its masks and its results
    folder; the crop and sizes; and the seed of the hold-out slice and of the test sample.
    """

    dataset: str
    data_dir: str
    pattern: str
    input_size: tuple
    output_size: tuple
    crop: bool
    normal_class: tuple | None
    test_dir: str
    mask_dir: str
    result_name: str
    test_size: int | None
    seed: int
    mirrors: tuple = ()
    patch_size: int = 0
    patch_stride: int = 0
    image_scale: float = 1.0

    @classmethod
    def from_flags(cls, flags):
        """The data the parsed flags name, with the defaults they leave open: sizes 28 for
        MNIST, else a crop of 108 and an output of 64 (widths: the heights); for an MVTec
        AD-style folder the pattern *.png and its test/, else *.jpg and test_data; masks in
        ground_truth/ beside the test folder. In patch mode the model's size is the patch's,
        and the stride half of it."""
        mnist = flags.dataset.lower() == "mnist"
        default_size = 28 if mnist else None
        input_height = flags.input_height or default_size or 108
        output_height = flags.patch_size or flags.output_height or default_size or 64
        output_width = flags.patch_size or flags.output_width or output_height
        folder = Path(flags.data_dir) / flags.dataset
        mvtec = not mnist and is_mvtec_folder(folder)
        test_dir = flags.test_dir or str(folder / "test" if mvtec else "test_data")
        return cls(dataset=flags.dataset, data_dir=flags.data_dir,
                   pattern=flags.input_fname_pattern or ("*.png" if mvtec else "*.jpg"),
                   input_size=(input_height, flags.input_width or input_height),
                   output_size=(output_height, output_width),
                   crop=flags.crop, normal_class=flags.normal_class, test_dir=test_dir,
                   mask_dir=flags.mask_dir or str(Path(test_dir).parent / "ground_truth"),
                   result_name=flags.test_result_dir, test_size=flags.test_size,
                   seed=flags.seed, mirrors=tuple(flags.mirror), patch_size=flags.patch_size,
                   patch_stride=flags.patch_stride or flags.patch_size // 2,
                   image_scale=flags.image_scale)

    @property
    def is_mnist(self):
        return self.dataset.lower() == "mnist"

    @property
    def folder(self):
        """The dataset's folder, <data_dir>/<dataset>."""
        return Path(self.data_dir) / self.dataset

    @property
    def is_mvtec(self):
        """Whether the dataset is an MVTec AD-style folder: train/good/ and test/."""
        return not self.is_mnist and is_mvtec_folder(self.folder)

    @property
    def crop_size(self):
        """The (h, w) every image must at least have: the crop, with ``crop``."""
        return self.input_size if self.crop else None

    @property
    def patches(self):
        """Whether the model works on patches of the images at their own resolution."""
        return self.patch_size > 0

    def image_spec(self, value_range):
        """How these images become inputs of a model working in ``value_range``."""
        return ImageSpec(input_size=self.input_size, output_size=self.output_size,
                         crop=self.crop, value_range=value_range,
                         scale=self.image_scale if self.patches else None)

    def check_test_sizes(self, source):
        """DataError naming the first test image smaller than the patch (patch mode)."""
        if not self.patches or source.files is None:
            return
        for path in source.files:
            height, width = utils.image_size(path, self.image_scale)
            if min(height, width) < self.patch_size:
                raise utils.DataError(
                    f"{path}: test image is {width}x{height} at --image_scale "
                    f"{self.image_scale:g}, smaller than the {self.patch_size}x"
                    f"{self.patch_size} patch: score images at least that large, or lower "
                    "--patch_size")

    def mnist_folder(self):
        """<data_dir>/mnist, fetched by download.py's verified fetch when a file is missing."""
        folder = Path(self.data_dir) / "mnist"
        if mnist_files_present(folder):
            return folder
        print(f"MNIST is not in {folder}: fetching it")
        try:
            download.download_mnist(self.data_dir, [*self.mirrors, *download.MNIST_MIRRORS])
        except download.DownloadError as error:
            raise utils.DataError(f"cannot fetch MNIST into {folder} ({error}): without a "
                                  "network, run `python download.py mnist --from PATH` with a "
                                  "folder or archive of the four idx files") from None
        return folder

    def training_source(self, check=True):
        """The training images: MNIST's train split (of the normal digits), an MVTec AD-style
        folder's train/good/, or the dataset's folder.

        Without ``check`` a folder's images are listed but not decoded (enough for c_dim).
        """
        if self.is_mnist:
            return mnist_source(self.mnist_folder(), "train", self.normal_class)
        folder = self.folder / "train" / "good" if self.is_mvtec else self.folder
        if not folder.is_dir():
            raise utils.DataError(f"dataset folder {folder} not found: put images there or run "
                                  f"`python download.py {self.dataset}`")
        return folder_source(folder, self.pattern, self.crop_size, check)

    def training_split(self):
        """The training images, those trained on and the held-out slice (``split_holdout``):
        (all, trained on, held out)."""
        source = self.training_source()
        return (source, *split_holdout(source, self.seed))

    def result_folder(self):
        """Where the anomaly test writes: ``result_name`` inside the test folder (beside it
        when ``test_dir`` is one image file)."""
        test_dir = Path(self.test_dir)
        return (test_dir.parent if test_dir.is_file() else test_dir) / self.result_name

    def test_source(self, channels):
        """The images to score, read with ``channels``: at most ``test_size`` of the test
        folder's (or the one image file's) when it holds any, else of MNIST's test split."""
        return limit_source(self._test_images(channels), self.test_size, self.seed)

    def check_test_folder(self):
        """DataError, before any work, when there is nothing to score: --test_dir neither an
        image nor a folder holding images (MNIST's test split stands in for those)."""
        test_dir = self.test_path()
        if self.is_mnist or test_dir.is_file():
            return
        if not test_dir.is_dir() or not any(
                path.suffix.lower() in IMAGE_EXTENSIONS for path in test_dir.rglob("*")):
            raise self.no_test_images()

    def test_path(self):
        """--test_dir as a Path; DataError when it exists as neither a folder nor a file."""
        test_dir = Path(self.test_dir)
        if test_dir.exists() and not (test_dir.is_dir() or test_dir.is_file()):
            raise utils.DataError(f"--test_dir {self.test_dir} is neither a folder nor an image")
        return test_dir

    def no_test_images(self):
        """The DataError of a test folder with nothing to score."""
        return utils.DataError(f"no test images in {self.test_dir}: put images there (normal/ "
                               "and anomaly/ subfolders give labels)")

    def _test_images(self, channels):
        test_dir = self.test_path()
        if test_dir.is_file():
            return file_source(self.test_dir, channels, self.crop_size)
        if test_dir.is_dir():
            source = test_folder_source(self.test_dir, self.result_folder(), channels,
                                        self.crop_size, self.mask_dir)
            if len(source):
                return source
        if self.is_mnist:
            return mnist_test_source(self.mnist_folder(), self.normal_class)
        raise self.no_test_images()
