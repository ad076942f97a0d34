"""Peak memory of the anomaly test as the number of scored images grows.

    python benchmarks/scoring_memory.py [--sizes 1000 10000 --steps 1]
    python benchmarks/scoring_memory.py --dataset mvtec [--sizes 200 2000]

``mnist``: writes a generated MNIST-format dataset (random pixels; 10,000 test images by
default) and trains the one-class DCGAN for one step with ``main.py --train``. ``mvtec``: writes
a generated 64x64 MVTec AD-style texture category (benchmarks/synthetic.py) whose test images
are half normal, half defective with ground-truth masks (so pixel-level metrics are computed),
and trains on it for one step. Then scores ``size`` test images with ``main.py --anomaly_test``
once per size, each in its own process so that each peak RSS (``resource.getrusage``) is its
own. Prints JSON with ``peak_rss_mb`` per size and ``ratio`` (largest over smallest size),
which stays near 1 when scoring streams its batches.
"""

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import synthetic

import main as anogan


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("mnist", "mvtec"), default="mnist")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="test images per run [1000 10000; 200 2000 for mvtec]")
    parser.add_argument("--steps", type=int, default=1, help="latent-search steps per image")
    parser.add_argument("--extra", default="", help="further main.py flags, space-separated")
    parser.add_argument("--score", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([200, 2000] if args.dataset == "mvtec" else [1000, 10000])
    return args


def write_idx(path, array):
    """Writes a uint8 array as an idx file."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(folder, train, test, seed=0):
    """An MNIST-format dataset: ``train`` digit-0 images, ``test`` images of any digit."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count, labels in (("train", train, np.zeros(train)),
                                 ("test", test, rng.integers(0, 10, test))):
        image_name, label_name = anogan.inputs.MNIST_FILES[split]
        write_idx(folder / image_name, rng.integers(0, 256, (count, 28, 28)))
        write_idx(folder / label_name, labels)


def write_data(root, dataset, test):
    """The benchmark's training and ``test`` test images under ``root``/data."""
    if dataset == "mnist":
        write_mnist(Path(root) / "data" / "mnist", train=160, test=test)
    else:
        defects = test // 4
        synthetic.write_texture_set(Path(root) / "data" / "mvtec" / "tex", size=64, train=128,
                                    test_good=test - 2 * defects, test_defects=defects)


def flags(root, dataset, extra=""):
    """main.py flags of the benchmark's model under ``root`` (and ``extra``, space-separated)."""
    root = Path(root)
    data = (["--dataset", "mnist", "--normal_class", "0"] if dataset == "mnist"
            else ["--dataset", "mvtec/tex", "--output_height", "64"])
    return [*data, "--batch_size", "64", "--retries", "0", "--data_dir", str(root / "data"),
            "--checkpoint_dir", str(root / "checkpoint"), "--sample_dir", str(root / "samples"),
            "--log_dir", str(root / "logs"), *extra.split()]


def test_folder(root, dataset, size):
    """--test_dir and --test_result_dir of one run: MNIST's split, or the category's test/."""
    if dataset == "mnist":
        return ["--test_dir", str(Path(root) / f"test_{size}")]
    return ["--test_result_dir", f"result_{size}"]


def peak_rss_mb():
    """This process's peak resident set size in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def score(root, dataset, size, steps, extra):
    """Child process: scores ``size`` test images through main.py and prints its figures."""
    started = time.perf_counter()
    status = anogan.main([*flags(root, dataset, extra), "--anomaly_test", "--test_size", str(size),
                          "--test_epoch", str(steps), *test_folder(root, dataset, size)])
    print(json.dumps({"images": size, "status": status, "peak_rss_mb": round(peak_rss_mb(), 1),
                      "seconds": round(time.perf_counter() - started, 1)}))


def measure(root, dataset, size, steps, extra):
    """Runs ``score`` in a fresh process; its JSON figures.

    OpenMP (the t-SNE plot's scikit-learn, not TensorFlow) gets one thread: its threads spin at
    barriers and make a 200-point t-SNE take 40 s instead of 1 s when the CPUs are shared.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--root", str(root), "--score", str(size),
                           "--steps", str(steps), "--dataset", dataset, f"--extra={extra}"],
                          capture_output=True,
                          text=True, check=True, env=env)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["status"] != 0:
        raise RuntimeError(f"scoring {size} images failed:\n{done.stderr[-2000:]}")
    return figures


def main(argv=None):
    args = parse_args(argv)
    if args.score is not None:
        return score(args.root, args.dataset, args.score, args.steps, args.extra)
    with tempfile.TemporaryDirectory() as root:
        write_data(root, args.dataset, max(args.sizes))
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON only
            trained = anogan.main([*flags(root, args.dataset, args.extra), "--train", "--epoch", "1",
                                   "--train_size", "64"])
        if trained != 0:
            raise RuntimeError("training the benchmark model failed")
        runs = [measure(root, args.dataset, size, args.steps, args.extra)
                for size in sorted(args.sizes)]
    peaks = {str(run["images"]): run["peak_rss_mb"] for run in runs}
    common.print_json({
        "dataset": args.dataset, "steps": args.steps, "peak_rss_mb": peaks,
        "seconds": {str(run["images"]): run["seconds"] for run in runs},
        "ratio": round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3),
        "growth_mb": round(runs[-1]["peak_rss_mb"] - runs[0]["peak_rss_mb"], 1),
        **common.environment()})


if __name__ == "__main__":
    main()
