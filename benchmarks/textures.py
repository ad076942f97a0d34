"""Detection on real texture photographs at their own resolution, in MVTec AD's layout.

    python benchmarks/textures.py --category brick --mode patch --seed 0
        [--work_dir out/textures] [--record benchmarks/results/textures] [-- main.py flags]

Builds the category once from a photograph that scikit-image ships (512x512, grayscale:
brick, grass, or gravel, the category used only to choose the declared mode): 40 training
images (128x128) from the photo's top half; 40 good and 75 defective test images (128x128)
from its bottom half, so no test pixel was ever trained on; five defect kinds of 15 images
with their masks, shaped like real ones: thin curved scratches, soft stains, holes, pasted
foreign material (from another photograph) and cracks. Then runs one ``--mode``:

- ``patch``: the declared patch mode (``MODES``): trains the GAN and its encoder on
  patches, scores every test image whole (``--anomaly_test``), with each image score in
  ``--image_scores`` and each map in ``--residual_maps``, smoothed at sigma 2. The declared
  scoring (docs/modes.md) rescores the trained model:
  ``--residual_maps gms --image_scores top1 --tag sigma4 -- --map_sigma 4``;
- ``resize``: the texture mode before patches (``MODES``: images resized to 64x64);
- ``mean``: no GAN: the map |x - mean training patch|, tiled and stitched as patch mode does.

Writes one JSON record (the command, commit, date and machine with the figures: image and
pixel ROC AUC, per-defect-type AUC, PRO, the health check, the steps, seconds to train and
to score, patches per second) into ``--record`` and prints it.
"""

import argparse
import json
import time
from pathlib import Path

import common
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from sklearn.metrics import roc_auc_score

import evaluation
import inputs
import scoring
import utils
from config import SearchConfig
from search import SearchResult

PHOTOS = ("brick", "grass", "gravel")
SIZE = 128
TRAIN_IMAGES, TEST_GOOD, PER_DEFECT = 40, 40, 15
DEFECTS = ("scratch", "stain", "hole", "foreign", "crack")
MODES = {  # (the model's flags, the training's, the scoring's)
    "patch": (["--patch_size", "32", "--gan", "wgan_gp", "--gf_dim", "32", "--df_dim", "32",
               "--batch_size", "32"],
              ["--min_steps", "4000", "--encoder_max_steps", "3000"],
              ["--z_init", "encoder", "--test_epoch", "0", "--map_sigma", "2"]),
    "resize": (["--output_height", "64", "--gan", "wgan_gp", "--gf_dim", "32", "--df_dim", "32",
                "--batch_size", "64"],
               ["--min_steps", "20000", "--encoder_min_steps", "2500", "--encoder_patience",
                "0"],
               ["--z_init", "encoder", "--test_epoch", "0", "--residual_shift", "3"]),
}
"""The declared patch mode, and the texture mode of whole images resized to 64x64."""


def photo(name):
    """The scikit-image photograph ``name`` as uint8 (512, 512)."""
    import skimage.data

    return np.asarray(getattr(skimage.data, name)(), np.uint8)


def crops(image, count, rng, rows):
    """``count`` SIZE x SIZE crops of ``image`` at random places within ``rows`` (a range)."""
    tops = rng.integers(rows.start, rows.stop - SIZE + 1, count)
    lefts = rng.integers(0, image.shape[1] - SIZE + 1, count)
    return [image[top:top + SIZE, left:left + SIZE].copy() for top, left in zip(tops, lefts)]


def curve_points(rng, length, bend):
    """Points of a quadratic Bezier curve of about ``length`` pixels inside the image."""
    start = rng.uniform(20, SIZE - 20, 2)
    angle = rng.uniform(0, np.pi)
    end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 4, SIZE - 5)
    middle = (start + end) / 2 + rng.normal(0, bend, 2)
    t = np.linspace(0, 1, 64)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * middle + t ** 2 * end


def draw_defect(kind, image, rng):
    """``image`` (uint8) with one defect of ``kind`` drawn in, and its mask (bool)."""
    mask = Image.new("L", (SIZE, SIZE))
    pen = ImageDraw.Draw(mask)
    out = image.astype(np.float32)
    if kind in ("scratch", "crack"):
        if kind == "scratch":
            points = curve_points(rng, rng.uniform(30, 70), 12)
        else:
            steps = rng.normal(0, 1, (40, 2)).cumsum(axis=0) * 0.6
            steps[:, 0] += np.linspace(0, rng.uniform(25, 45), 40)
            points = np.clip(rng.uniform(20, SIZE - 60, 2) + steps, 2, SIZE - 3)
        pen.line([tuple(p) for p in points], fill=255, width=int(rng.integers(1, 3)))
        shade = rng.choice([-1, 1]) * rng.uniform(50, 80) if kind == "scratch" else -70
        line = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255
        out += shade * line
        defect = line > 0.25
    elif kind == "stain":
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        centre, radius = rng.uniform(30, SIZE - 30, 2), rng.uniform(8, 16, 2)
        falloff = np.exp(-(((yy - centre[0]) / radius[0]) ** 2
                           + ((xx - centre[1]) / radius[1]) ** 2))
        out += rng.choice([-1, 1]) * rng.uniform(35, 55) * falloff
        defect = falloff > 0.3
    elif kind == "hole":
        centre, radius = rng.uniform(25, SIZE - 25, 2), rng.uniform(4, 9, 2)
        pen.ellipse([centre[1] - radius[1], centre[0] - radius[0], centre[1] + radius[1],
                     centre[0] + radius[0]], fill=255)
        soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(1.0)), np.float32) / 255
        out = out * (1 - soft) + rng.uniform(10, 35) * soft
        defect = np.asarray(mask) > 0
    else:  # foreign material: a piece of another photograph pasted in
        other = photo("camera")
        side = int(rng.integers(12, 24))
        top, left = rng.integers(0, other.shape[0] - side, 2)
        piece = other[top:top + side, left:left + side].astype(np.float32)
        y, x = rng.integers(10, SIZE - side - 10, 2)
        out[y:y + side, x:x + side] = piece
        defect = np.zeros((SIZE, SIZE), bool)
        defect[y:y + side, x:x + side] = True
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), defect


def build_category(folder, name, seed=0):
    """Writes the category ``name`` into ``folder`` (MVTec AD's layout), once."""
    if (folder / "test").is_dir():
        return
    rng = np.random.default_rng([seed, PHOTOS.index(name)])
    image = photo(name)
    half = image.shape[0] // 2
    tmp = folder.with_name(folder.name + ".partial")
    layout = {"train/good": crops(image, TRAIN_IMAGES, rng, range(half)),
              "test/good": crops(image, TEST_GOOD, rng, range(half, image.shape[0]))}
    for kind in DEFECTS:
        for index, clean in enumerate(crops(image, PER_DEFECT, rng, range(half, image.shape[0]))):
            broken, defect = draw_defect(kind, clean, rng)
            layout.setdefault(f"test/{kind}", []).append(broken)
            (tmp / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(defect.astype(np.uint8) * 255).save(
                tmp / "ground_truth" / kind / f"{index:03d}_mask.png")
    for place, images in layout.items():
        (tmp / place).mkdir(parents=True, exist_ok=True)
        for index, pixels in enumerate(images):
            Image.fromarray(pixels).save(tmp / place / f"{index:03d}.png")
    tmp.rename(folder)


def mean_patch_baseline(category, patch, stride):
    """Image and pixel ROC AUC, per-type AUC and PRO of |x - mean training patch|, tiled and
    stitched as patch mode is."""
    spec = inputs.ImageSpec((patch, patch), (patch, patch), value_range=(0.0, 1.0), scale=1.0)
    source = inputs.folder_source(category / "train" / "good", "*.png")
    mean = inputs.PatchImages(source, spec).arrays(1024, 0)[0].mean(axis=0)
    test = inputs.test_folder_source(category / "test", category / "test" / "none", 1,
                                     mask_dir=category / "ground_truth")
    search = SearchConfig(map_sigma=2.0)
    maps, masks = [], []
    for path, mask in zip(test.files, test.masks):
        image = utils.load_scaled_pixels(path, 1.0, 1)[None].astype(np.float32) / 255

        def constant(tiles, first):
            fakes = np.broadcast_to(mean, tiles.shape)
            return SearchResult(np.zeros(len(tiles)), np.zeros(len(tiles)),
                                           np.zeros(len(tiles)), np.zeros((len(tiles), 1)),
                                           {0: fakes})

        _, stitched = scoring.score_tiled_image(image, patch, stride, 256, constant, None,
                                                (0.0, 1.0), search, "top1")
        maps.append(stitched[0])
        masks.append(utils.load_mask(mask, spec, stitched.shape[1:]))
    return detection_figures(test, maps, masks)


def detection_figures(test, maps, masks):
    """Image ROC AUC (top 1 % of the map), pixel ROC AUC, per-type AUC and PRO of maps."""
    scores = np.array([np.mean(np.sort(m.ravel())[-max(1, round(m.size / 100)):])
                       for m in maps])
    pixels, regions = evaluation.PixelROC(), evaluation.RegionOverlap()
    for image_map, mask in zip(maps, masks):
        pixels.add(image_map[None], mask[None])
        regions.add(image_map[None], mask[None])
    return {"roc_auc": float(roc_auc_score(test.labels, scores)),
            "pixel_roc_auc": pixels.auc(), "pro_auc": regions.auc(),
            "per_type_roc_auc": evaluation.per_type_roc_auc(test.names, scores, test.labels)}


def run_gan_mode(category, work, args):
    """Trains ``args.mode`` (``MODES``) and scores with each map and image score; the
    figures."""
    model_flags, train_flags, scoring_flags = MODES[args.mode]
    flags = ["--dataset", category.name, "--data_dir", category.parent, "--checkpoint_dir",
             work / "checkpoint", "--sample_dir", work / "samples", "--log_dir", work / "logs",
             "--seed", args.seed, *model_flags]
    figures = {"train_seconds": common.run_main([*flags, *train_flags, "--train",
                                                 "--train_encoder", *args.extra])}
    for residual_map in args.residual_maps.split(","):
        for image_score in args.image_scores.split(","):
            name = "_".join([args.mode, f"s{args.seed}", *([args.tag] if args.tag else []),
                             residual_map, image_score])
            common.run_main([*flags, "--anomaly_test", *scoring_flags, "--residual_map",
                             residual_map, "--image_score", image_score, "--test_result_dir",
                             name, *args.extra])
            metrics = json.loads((category / "test" / name / "metrics.json").read_text())
            figures[f"{residual_map}_{image_score}"] = {key: metrics.get(key) for key in (
                "roc_auc", "pixel_roc_auc", "pro_auc", "per_type_roc_auc", "seconds",
                "images_per_second")}
            figures.update(health=metrics["health"], gan_steps=metrics["gan_steps"],
                           encoder_steps=metrics["encoder_steps"],
                           training_seed=metrics["training_seed"])
    return figures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", choices=PHOTOS, required=True)
    parser.add_argument("--mode", choices=("patch", "resize", "mean"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--residual_maps", default="l1,ssim,gms")
    parser.add_argument("--image_scores", default="top1,smoothmax,critic")
    parser.add_argument("--work_dir", default="out/textures")
    parser.add_argument("--record", default=None, help="folder for the JSON record")
    parser.add_argument("--tag", default=None,
                        help="names the record and the result folders of a rescoring of a "
                             "trained model (main.py reuses what --work_dir holds)")
    parser.add_argument("extra", nargs="*",
                        help="further main.py flags, after --; they override the mode's")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    category = work / "data" / args.category
    build_category(category, args.category)
    started = time.perf_counter()
    if args.mode == "mean":
        figures = mean_patch_baseline(category, 32, 16)
    else:
        figures = run_gan_mode(category, work / f"{args.mode}_s{args.seed}", args)
    record = {"benchmark": "textures", "category": args.category, "mode": args.mode,
              "seed": args.seed, "tag": args.tag,
              **common.provenance(common.script_command("textures.py", argv)),
              "seconds": round(time.perf_counter() - started, 1), **figures,
              **common.environment()}
    if args.record:
        name = f"{args.category}_{args.mode}_s{args.seed}" + (f"_{args.tag}" if args.tag else "")
        common.write_record(Path(args.record) / f"{name}.json", record)
    common.print_json(record)


if __name__ == "__main__":
    main()
