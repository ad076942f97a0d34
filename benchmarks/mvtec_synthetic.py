"""Image- and pixel-level detection on a generated MVTec AD-style texture category.

    python benchmarks/mvtec_synthetic.py [--size 64 --epochs 10 --encoder_epoch 3]
        [--modes a,b] [--image_scores sum,top1,smoothmax] [--work_dir out/mvtec_synthetic]

Writes the category (benchmarks/synthetic.py: striped textures, bright spots and dark
scratches of about 1 % of the image, with ground-truth masks) under ``--work_dir``, trains the
DCGAN on train/good and its encoder, then scores test/ with each mode (a: the original search
from U(-1, 1); b: the encoder alone, no search; c: the search from E(x)) and each image score.
Prints one JSON object: per mode and image score, ROC AUC, pixel ROC AUC, per-defect AUCs and
seconds; training times. Reuses what an earlier run with the same ``--work_dir`` trained.
"""

import argparse
import json
from pathlib import Path

import common
import synthetic

MODES = {"a": ["--z_init", "random"],
         "b": ["--z_init", "encoder", "--test_epoch", "0"],
         "c": ["--z_init", "encoder"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=512, help="normal training images")
    parser.add_argument("--test_good", type=int, default=64)
    parser.add_argument("--test_defects", type=int, default=32, help="per defect type")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--encoder_epoch", type=int, default=3)
    parser.add_argument("--modes", default="a,b")
    parser.add_argument("--image_scores", default="sum,top1,smoothmax")
    parser.add_argument("--work_dir", default="out/mvtec_synthetic")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    category = work / "data" / "mvtec" / "synthetic"
    if not category.exists():
        synthetic.write_texture_set(category, args.size, args.train, args.test_good,
                                    args.test_defects, mode="RGB")
    flags = ["--dataset", "mvtec/synthetic", "--data_dir", work / "data", "--output_height",
             args.size, "--checkpoint_dir", work / "checkpoint", "--sample_dir",
             work / "samples", "--log_dir", work / "logs", "--epoch", args.epochs,
             "--encoder_epoch", args.encoder_epoch, "--batch_size", args.batch_size]
    figures = {"size": args.size, "train_images": args.train,
               "test_images": args.test_good + 2 * args.test_defects,
               "gan_epochs": args.epochs, "encoder_epochs": args.encoder_epoch,
               "train_seconds": common.run_main([*flags, "--train"]),
               "encoder_seconds": common.run_main([*flags, "--train_encoder"])}
    for mode in args.modes.split(","):
        for image_score in args.image_scores.split(","):
            name = f"{mode}_{image_score}"
            result_dir = category / "test" / name
            if not (result_dir / "metrics.json").exists():
                common.run_main([*flags, "--anomaly_test", *MODES[mode], "--image_score",
                                 image_score, "--test_result_dir", name])
            metrics = json.loads((result_dir / "metrics.json").read_text())
            figures[name] = {key: metrics[key] for key in (
                "roc_auc", "pixel_roc_auc", "per_type_roc_auc", "seconds", "images_per_second")}
    common.print_json({**figures, **common.environment()})


if __name__ == "__main__":
    main()
