"""Image- and pixel-level detection on a generated MVTec AD-style texture category.

    python benchmarks/mvtec_synthetic.py [--size 64 --epochs 10 --encoder_epoch 3]
        [--photo brick.png [--subtle]] [--gan dcgan] [--modes a,b,b_izif]
        [--image_scores sum,top1,smoothmax,critic] [--work_dir out/mvtec_synthetic]

Writes the category (benchmarks/synthetic.py: striped RGB textures, or with ``--photo`` 64x64
grayscale crops of that photograph; bright spots and dark scratches of about 1 % of the image,
with ground-truth masks) under ``--work_dir``, trains the GAN on train/good (with main.py's
health check and retries) and its encoder, then scores test/ with each mode (a: the original
search from U(-1, 1); b: the encoder alone, no search; b_izif: b with f-AnoGAN's izi_f score;
c: the search from E(x)) and each image score. Prints one JSON object: per mode and image
score, ROC AUC, pixel ROC AUC, per-defect AUCs and seconds; the same for the baseline
|x - mean training image|; the health check; training times. Reuses what an earlier run with
the same ``--work_dir`` trained.
"""

import argparse
import json
from pathlib import Path

import common
import numpy as np
import synthetic
from sklearn.metrics import roc_auc_score

import evaluation
import inputs
import utils
from losses import map_score

MODES = {"a": ["--z_init", "random"],
         "b": ["--z_init", "encoder", "--test_epoch", "0"],
         "b_izif": ["--z_init", "encoder", "--test_epoch", "0", "--score", "izif"],
         "b_shift3": ["--z_init", "encoder", "--test_epoch", "0", "--residual_shift", "3"],
         "c": ["--z_init", "encoder"]}


def mean_image_baseline(category, size, image_scores, channels):
    """Image and pixel ROC AUC of the residual |x - mean training image| (no GAN at all)."""
    def load(path):
        return utils.load_image(path, (size, size), (size, size), False, channels, (0.0, 1.0))

    mean = np.mean([load(p) for p in inputs.list_images(category / "train" / "good", "*.png")],
                   axis=0)
    source = inputs.test_folder_source(category / "test", category / "test" / "none", channels,
                                       mask_dir=category / "ground_truth")
    maps = evaluation.anomaly_maps(np.stack([load(f) for f in source.files]), mean[None],
                                   (0.0, 1.0))
    pixels = evaluation.PixelROC()
    spec = inputs.ImageSpec((size, size), (size, size))
    pixels.add(maps, np.stack([utils.load_mask(m, spec) for m in source.masks]))
    figures = {"pixel_roc_auc": pixels.auc()}
    for kind in (k for k in image_scores if k != "critic"):  # the mean image has no critic
        scores = maps.mean(axis=(1, 2)) if kind == "sum" else map_score(maps, kind).numpy()
        figures[f"roc_auc_{kind}"] = float(roc_auc_score(source.labels, scores))
    return figures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=512, help="normal training images")
    parser.add_argument("--test_good", type=int, default=64)
    parser.add_argument("--test_defects", type=int, default=32, help="per defect type")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--encoder_epoch", type=int, default=3)
    parser.add_argument("--photo", default=None,
                        help="a photograph to crop the category from (grayscale) instead of "
                             "generated stripes")
    parser.add_argument("--subtle", action="store_true",
                        help="with --photo: turned patches and smudges instead of spots and "
                             "scratches (defects a mean image does not find)")
    parser.add_argument("--gan", default="dcgan")
    parser.add_argument("--extra", default="", help="further main.py flags, space-separated")
    parser.add_argument("--modes", default="a,b")
    parser.add_argument("--image_scores", default="sum,top1,smoothmax")
    parser.add_argument("--work_dir", default="out/mvtec_synthetic")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    category = work / "data" / "mvtec" / "synthetic"
    if not category.exists() and args.photo:
        synthetic.write_photo_crops(category, args.photo, args.size, args.train, args.test_good,
                                    args.test_defects, defects=synthetic.SUBTLE_DEFECTS
                                    if args.subtle else synthetic.DEFECTS)
    elif not category.exists():
        synthetic.write_texture_set(category, args.size, args.train, args.test_good,
                                    args.test_defects, mode="RGB")
    flags = ["--dataset", "mvtec/synthetic", "--data_dir", work / "data", "--output_height",
             args.size, "--checkpoint_dir", work / "checkpoint", "--sample_dir",
             work / "samples", "--log_dir", work / "logs", "--epoch", args.epochs,
             "--encoder_epoch", args.encoder_epoch, "--batch_size", args.batch_size,
             "--gan", args.gan, *args.extra.split()]
    figures = {"size": args.size, "train_images": args.train, "photo": args.photo,
               "gan": args.gan, "subtle_defects": args.subtle,
               "test_images": args.test_good + 2 * args.test_defects,
               "gan_epochs": args.epochs, "encoder_epochs": args.encoder_epoch,
               "encoder_steps": None,
               "train_seconds": common.run_main([*flags, "--train"]),
               "encoder_seconds": common.run_main([*flags, "--train_encoder"])}
    image_scores = args.image_scores.split(",")
    figures["mean_image_baseline"] = mean_image_baseline(category, args.size, image_scores,
                                                         1 if args.photo else 3)
    for mode in args.modes.split(","):
        for image_score in image_scores:
            name = f"{mode}_{image_score}"
            result_dir = category / "test" / name
            if not (result_dir / "metrics.json").exists():
                common.run_main([*flags, "--anomaly_test", *MODES[mode], "--image_score",
                                 image_score, "--test_result_dir", name])
            metrics = json.loads((result_dir / "metrics.json").read_text())
            figures[name] = {key: metrics[key] for key in (
                "roc_auc", "pixel_roc_auc", "per_type_roc_auc", "seconds", "images_per_second")}
            figures["health"], figures["training_seed"] = metrics["health"], metrics[
                "training_seed"]
            figures["gan_steps"] = metrics["gan_steps"]
            if metrics["encoder_steps"] is not None:  # None in a mode that does not use E
                figures["encoder_steps"] = metrics["encoder_steps"]
    common.print_json({**figures, **common.environment()})


if __name__ == "__main__":
    main()
