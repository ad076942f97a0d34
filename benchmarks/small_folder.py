"""A small folder of real images: the recommended one-pass mode against the original search.

    python benchmarks/small_folder.py --data_dir ../shared/data --digit 3 --train 120
        [--batch_size 16] [--epochs 25] [--min_steps 1000] [--test 200]
        [--work_dir out/small_folder] [--record benchmarks/results/small_folder/NAME.json]

Writes ``--train`` MNIST training images of one digit as PNG files (a user's own small folder;
the unconditional DCGAN, as for any folder), and ``--test`` MNIST test images (half that digit in
normal/, half the others in anomaly/), trains the GAN as the README recommends for folders
(``--min_steps``) and its encoder with main.py's defaults (``--encoder_min_steps`` included),
then scores the test folder with the README's mode for
folders (z = E(x), ``--image_score top1``), the same mode with the summed score, and the original
search (z from U(-1, 1), 100 steps). Prints one JSON object (and writes it, with the command,
commit, date and machine, to ``--record``): each mode's ROC AUC, the GAN's and the encoder's
training steps, why E stopped, and the health check.
"""

import argparse
import json
from pathlib import Path

import common
import numpy as np
from PIL import Image

import inputs

MODES = {"recommended": ["--z_init", "encoder", "--test_epoch", "0", "--image_score", "top1"],
         "encoder_sum": ["--z_init", "encoder", "--test_epoch", "0"],
         "original_search": ["--z_init", "random"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="data", help="folder holding mnist/")
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--min_steps", type=int, default=1000,
                        help="fewest GAN steps (the README's recommendation for folders)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="out/small_folder")
    parser.add_argument("--record", default=None, help="a JSON file for the figures")
    return parser.parse_args(argv)


def write_pngs(images, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image[..., 0], "L").save(folder / f"{name}.png")


def write_folders(args, work):
    """The training folder and the labelled test folder, from MNIST."""
    rng = np.random.default_rng(args.seed)
    train_images, train_labels = inputs.load_mnist(Path(args.data_dir) / "mnist", "train")
    chosen = rng.choice(np.flatnonzero(train_labels == args.digit), args.train, replace=False)
    write_pngs(train_images[chosen], work / "data" / "small", [f"{i:05d}" for i in chosen])
    test_images, test_labels = inputs.load_mnist(Path(args.data_dir) / "mnist", "test")
    for folder, mask in (("normal", test_labels == args.digit),
                         ("anomaly", test_labels != args.digit)):
        picked = rng.choice(np.flatnonzero(mask), args.test // 2, replace=False)
        write_pngs(test_images[picked], work / "test" / folder, [f"{i:05d}" for i in picked])


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    if not (work / "test").exists():
        write_folders(args, work)
    flags = ["--dataset", "small", "--data_dir", work / "data", "--input_fname_pattern", "*.png",
             "--input_height", 28, "--output_height", 28, "--batch_size", args.batch_size,
             "--epoch", args.epochs, "--min_steps", args.min_steps, "--seed", args.seed,
             "--checkpoint_dir", work / "checkpoint", "--sample_dir", work / "samples",
             "--log_dir", work / "logs", "--test_dir", work / "test"]
    figures = {"digit": args.digit, "train_images": args.train, "test_images": args.test,
               "batch_size": args.batch_size, "gan_epochs": args.epochs,
               "gan_min_steps": args.min_steps,
               "train_seconds": common.run_main([*flags, "--train"]),
               "encoder_seconds": common.run_main([*flags, "--train_encoder"])}
    for name, mode in MODES.items():
        if not (work / "test" / name / "metrics.json").exists():
            common.run_main([*flags, "--anomaly_test", *mode, "--test_result_dir", name])
        metrics = json.loads((work / "test" / name / "metrics.json").read_text())
        figures[name] = {key: metrics[key] for key in ("roc_auc", "pr_auc", "seconds")}
        figures["gan_steps"] = metrics["gan_steps"]
        figures["encoder_steps"] = metrics["encoder_steps"] or figures.get("encoder_steps")
        figures["health"] = metrics["health"]
    figures["encoder_stop"] = (figures["health"].get("encoder") or {}).get("stopped_by")
    figures.update(common.environment())
    if args.record:
        common.write_record(args.record, {
            "benchmark": "small_folder",
            **common.provenance(common.script_command("small_folder.py", argv)), **figures})
    common.print_json(figures)


if __name__ == "__main__":
    main()
