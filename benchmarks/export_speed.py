"""Speed and size of the exported SavedModel beside --anomaly_test's, on one-class MNIST.

    python benchmarks/export_speed.py --data_dir ../shared/data --digit 0
        --checkpoint_dir out/mnist_one_class/dcgan/e5_seed0/checkpoint [--test_size 1000]
        [--batches 1,64] [--work_dir out/export_speed]

Takes a trained one-class MNIST GAN and encoder (e.g. from benchmarks/mnist_one_class.py),
exports it (``main.py --export``), scores ``--test_size`` MNIST test images with
``--anomaly_test --z_init encoder --test_epoch 0`` (its images per second, every output
written), then feeds the same images' uint8 pixels to the SavedModel's ``serving_default`` at
each batch size (after one warm-up call) and prints one JSON object: images per second of
both, the largest score difference, and the SavedModel's size on disk.
"""

import argparse
import csv
import json
import time
from pathlib import Path

import common
import numpy as np
import tensorflow as tf

import inputs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--digit", type=int, default=0)
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--test_size", type=int, default=1000)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--score", default="izif")
    parser.add_argument("--work_dir", default="out/export_speed")
    return parser.parse_args(argv)


def images_per_second(serve, pixels, batch):
    """Images per second of ``serve`` over ``pixels`` in batches of ``batch`` (warmed up)."""
    serve(images=tf.constant(pixels[:batch]))
    started = time.perf_counter()
    scores = [serve(images=tf.constant(pixels[i:i + batch]))["score"].numpy()
              for i in range(0, len(pixels), batch)]
    return len(pixels) / (time.perf_counter() - started), np.concatenate(scores)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    saved = work / f"detector_d{args.digit}"
    flags = ["--dataset", "mnist", "--normal_class", args.digit, "--data_dir", args.data_dir,
             "--checkpoint_dir", args.checkpoint_dir, "--test_dir", work, "--test_result_dir",
             f"d{args.digit}", "--test_size", args.test_size, "--z_init", "encoder",
             "--test_epoch", 0, "--score", args.score]
    common.run_main([*flags, "--anomaly_test", "--export", saved])
    metrics = json.loads((work / f"d{args.digit}" / "metrics.json").read_text())
    with open(work / f"d{args.digit}" / "scores.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    images, _ = inputs.load_mnist(Path(args.data_dir) / "mnist", "test")
    pixels = images[[int(row["file"].split("_")[1]) for row in rows]]
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    figures = {"digit": args.digit, "images": len(pixels),
               "anomaly_test_images_per_second": metrics["images_per_second"],
               "saved_model_mb": round(sum(p.stat().st_size for p in saved.rglob("*")
                                           if p.is_file()) / 2 ** 20, 2)}
    expected = np.array([float(row["anomaly_score"]) for row in rows])
    for batch in (int(b) for b in args.batches.split(",")):
        speed, scores = images_per_second(serve, pixels, batch)
        figures[f"saved_model_images_per_second_batch{batch}"] = round(speed, 1)
        figures[f"max_relative_score_difference_batch{batch}"] = float(
            np.max(np.abs(scores - expected) / np.maximum(np.abs(expected), 1e-12)))
    common.print_json({**figures, **common.environment()})


if __name__ == "__main__":
    main()
