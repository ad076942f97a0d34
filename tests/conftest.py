"""Shared fixtures: small generated image folders and MNIST-format idx files."""

import contextlib
import csv
import gzip
import importlib
import os
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Two workers share two cores: one intra-op thread each (and in their subprocesses) keeps them
# from contending for both cores on every tiny op.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

SHARED_DETECTOR_GROUP = "tiny_detector"
SLOWEST_GROUPS_FIRST = (SHARED_DETECTOR_GROUP, "test_benchmarks", "test_encoder", "test_patches",
                        "test_download", "test_train", "test_robustness", "test_anomaly",
                        "test_encoder_stop", "test_distribute", "test_cli", "test_health",
                        "test_mvtec")
"""xdist groups in the order they are handed to the workers: longest first (as measured by
``pytest --durations``), so that no long module is left to run alone at the end."""
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(script):
    """A benchmark script imported as a module (benchmarks/ on the path)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(script)


def run_in_process(script, capsys, *args):
    """What a benchmark script's ``main`` prints (``out``, ``err``), run in this process."""
    module = benchmark_module(script)
    capsys.readouterr()
    module.main([str(arg) for arg in args])
    return capsys.readouterr()


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


def error_line(capsys):
    """The one line a failed command wrote on stderr (asserting it is one 'error:' line)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def exit_code(flags):
    """main.main's exit code, whether returned or raised by argparse."""
    import main

    try:
        return main.main(flags)
    except SystemExit as stop:
        return stop.code


def read_scores(result_dir):
    """The rows of an anomaly test's scores.csv, as dicts."""
    with open(f"{result_dir}/scores.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Marks each test with its ``xdist_group`` (``--dist loadgroup``): its module, so that
    module fixtures are set up once, or one group for every module using ``tiny_detector``, so
    that it trains once. Longest groups first."""
    shared = {item.module.__name__ for item in items
              if SHARED_DETECTOR_GROUP in getattr(item, "fixturenames", ())}
    groups = {item: SHARED_DETECTOR_GROUP if item.module.__name__ in shared
              else item.module.__name__ for item in items}
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
    order = {group: rank for rank, group in enumerate(SLOWEST_GROUPS_FIRST)}
    items.sort(key=lambda item: order.get(groups[item], len(order)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh current directory holding data/, as a user's checkout would."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    return tmp_path


class RangeHandler(BaseHTTPRequestHandler):
    """Serves server.files by path, honouring 'Range: bytes=N-' unless server.ignore_range."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if srv.failures.get(self.path, 0) > 0:
            srv.failures[self.path] -= 1
            return self.reply(503, b"busy")
        if self.path not in srv.files:
            return self.reply(404, b"not found")
        body, content_type = srv.files[self.path]
        requested = self.headers.get("Range")
        if requested and not srv.ignore_range:
            return self.reply_range(body, int(requested.removeprefix("bytes=").split("-")[0]))
        return self.reply(200, body, content_type)

    def reply_range(self, body, start):
        if start >= len(body):
            return self.reply(416, b"", headers={"Content-Range": f"bytes */{len(body)}"})
        content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
        return self.reply(206, body[start:], headers={"Content-Range": content_range})

    def reply(self, status, body, content_type="application/octet-stream", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.server.cookie:
            self.send_header("Set-Cookie", self.server.cookie)
        self.end_headers()
        self.wfile.write(body[: self.server.truncate_at] if self.server.truncate_at else body)

    def log_message(self, *args):
        pass


class FileServer(ThreadingHTTPServer):
    """A loopback server whose files, failures and request log the tests control."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files = {}
        self.failures = {}
        self.requests = []
        self.ignore_range = False
        self.truncate_at = None
        self.cookie = None

    def url(self, path):
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def add(self, path, body, content_type="application/octet-stream"):
        self.files[path] = (body, content_type)

    def ranges_for(self, path):
        return [rng for requested, rng in self.requests if requested == path and rng]


@contextlib.contextmanager
def serving(httpd):
    """``httpd`` serving on a thread of its own while within; shut down and closed after."""
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server():
    with serving(FileServer()) as httpd:
        yield httpd


@pytest.fixture
def closed_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


TINY_FLAGS = ["--input_fname_pattern", "*.png", "--batch_size", "8", "--input_height", "28",
              "--output_height", "28", "--z_dim", "16", "--gf_dim", "8", "--df_dim", "8",
              "--learning_rate", "0.002", "--encoder_learning_rate", "0.002", "--retries", "0",
              "--no_figures", "--encoder_patience", "0"]
"""The flags of the shared tiny models (learning rates 10x and 40x the defaults; the encoder
trained for a fixed length)."""


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    """A tiny DCGAN trained 3 epochs (12 steps, checkpoints at 4, 8 and 12) on 28x28 rings and
    its encoder (48 steps), shared by the tests that only need *a* trained model and do not
    change it; (root, flags)."""
    import main

    root = tmp_path_factory.mktemp("tiny_detector")
    write_images(root / "data" / "rings", 40, 28, kind=0)
    flags = ["--dataset", "rings", *TINY_FLAGS, "--data_dir", str(root / "data"),
             "--checkpoint_dir", str(root / "checkpoint"), "--sample_dir", str(root / "samples"),
             "--log_dir", str(root / "logs"), "--epoch", "3", "--encoder_min_steps", "48",
             "--save_every", "4"]
    assert main.main([*flags, "--train", "--train_encoder"]) == 0
    return root, flags
