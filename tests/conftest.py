"""Shared fixtures: small generated image folders and MNIST-format idx files."""

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pattern_image(kind, size, rng):
    """A noisy 0..255 image whose structure depends on ``kind``: a ring (0) or a bar (1..9)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    if kind == 0:
        radius = np.sqrt(xx ** 2 + yy ** 2)
        image = np.exp(-((radius - 0.55) ** 2) / 0.02)
    else:
        angle = np.pi * kind / 10
        distance = np.abs(xx * np.sin(angle) - yy * np.cos(angle))
        image = np.exp(-(distance ** 2) / 0.02)
    image = image + rng.normal(0, 0.05, image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_images(folder, count, size, mode="L", kind=0, seed=0, suffix="png"):
    """Writes ``count`` pattern images of ``kind`` into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        gray = pattern_image(kind, size, rng)
        if mode == "RGB":
            pixels = np.stack([gray, np.flipud(gray), gray // 2], axis=-1)
        else:
            pixels = gray
        path = folder / f"img_{kind}_{index:03d}.{suffix}"
        Image.fromarray(pixels, mode).save(path)
        paths.append(path)
    return paths


def write_idx(path, array, compress=True):
    """Writes a uint8 array as an idx file (gzipped when ``compress``)."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape)
    data = header + array.tobytes()
    opener = gzip.open if compress else open
    with opener(str(path) + (".gz" if compress else ""), "wb") as handle:
        handle.write(data)


def write_mnist(folder, train_per_digit=4, test_per_digit=2, seed=0):
    """A tiny MNIST in idx format: ``*_per_digit`` 28x28 pattern images of each digit."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_digit in (("train", train_per_digit), ("t10k", test_per_digit)):
        labels = np.repeat(np.arange(10), per_digit)
        rng.shuffle(labels)
        images = np.stack([pattern_image(int(k), 28, rng) for k in labels])
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, compress=split == "train")
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory holding data/, as a user's checkout would."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path
