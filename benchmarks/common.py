"""Shared pieces of the benchmarks: repo imports, FLOP counts from layer shapes, the roofline."""

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runtime

tf = runtime.import_tensorflow()  # before anything imports it: its start-up notices held back

import keras

import main as anogan
import ops
import phase_conv
import utils


def shape_parser(description, steps=None, threads=False):
    """An argument parser with the benchmark's image shape and batch (and steps; with
    ``threads`` thread counts, seed and the roofline matmul's length)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--height", type=int, default=28)
    parser.add_argument("--width", type=int, default=None, help="default: --height")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    if steps is not None:
        parser.add_argument("--steps", type=int, default=steps)
    if threads:
        parser.add_argument("--intra_threads", type=int, default=0, help="0: TensorFlow's default")
        parser.add_argument("--inter_threads", type=int, default=0, help="0: TensorFlow's default")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--matmul_seconds", type=float, default=1.5,
                            help="length of each roofline matmul measurement")
    return parser


def layer_flops(layer):
    """Forward FLOPs per image of one weighted layer (2 per multiply-add), from its shapes.

    Dense: in x out. Conv2D: every output pixel of every tap (padding included). Deconv2D:
    every input pixel through every tap.
    """
    kernel = layer.kernel.shape
    if isinstance(layer, ops.Conv2D):
        out_pixels = 1
        for size in layer.input_size:
            out_pixels *= -(-size // layer.stride)
        return 2 * out_pixels * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    if isinstance(layer, ops.Deconv2D):
        height, width = layer.input_size
        return 2 * height * width * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    return 2 * kernel[0] * kernel[1]


def model_flops(model):
    """Forward FLOPs per image of each weighted layer of an unconditional G or D, in call order."""
    weighted = (keras.layers.Dense, ops.Conv2D, ops.Deconv2D)
    return [layer_flops(layer) for layer in model.layers if isinstance(layer, weighted)]


def matmul_gflops(size=2048, seconds=1.5):
    """FLOP/s (in GFLOP/s) of a large dense float32 ``tf.matmul``, the practical peak."""
    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))
    matmul = tf.function(tf.matmul)
    matmul(a, b).numpy()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        matmul(a, b).numpy()
        count += 1
    return 2 * size ** 3 * count / (time.perf_counter() - started) / 1e9


def configure_threads(intra, inter):
    """Sets TensorFlow's thread pools before its runtime starts; 0 keeps TensorFlow's default
    (and leaves a running runtime alone)."""
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def environment():
    """Where the figures were measured."""
    gpus = tf.config.list_logical_devices("GPU")
    return {"device": gpus[0].name if gpus else "CPU", "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__, "onednn": phase_conv.onednn_enabled(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}


def git_commit():
    """The repository's short commit, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(command):
    """What a record names its measurement by: the command, commit, date and machine."""
    where = environment()
    return {"command": command, "commit": git_commit(),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {where['cpu_count']} cores, {where['device']}"}


def write_record(path, record):
    """Writes a benchmark's JSON record to ``path``, its folder made if need be, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    utils.write_json(path, record)


def script_command(script, argv=None):
    """The command line that ran benchmarks/``script`` with ``argv`` (its own, by default)."""
    return " ".join(["python", f"benchmarks/{script}",
                     *map(str, sys.argv[1:] if argv is None else argv)])


def run_main(flags):
    """main.py in this process, its output on stderr (stdout is for the JSON); returns its
    seconds, or exits when it fails."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        status = anogan.main([str(flag) for flag in flags])
    if status != 0:
        sys.exit(f"main.py {' '.join(map(str, flags))} failed with exit code {status}")
    return round(time.perf_counter() - started, 1)


def print_json(figures):
    print(json.dumps(figures, indent=2))
