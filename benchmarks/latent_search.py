"""Latent-search throughput: one image at a time vs batched, and against the matmul roofline.

    python benchmarks/latent_search.py [--height 28 --channels 1 --batch 64 --steps 20]

Prints one JSON object. Everything is measured in this one process, side by side, with the same
compiled search (``DCGAN.search``) of a randomly initialised DCGAN: per image (batch 1, as the
original searched) on ``--per_image`` images one after another, and batched on ``--batch``
images at once, the two taking turns ``--repeats`` times; each keeps its fastest turn. Compare
ratios, not absolute figures, on a shared machine.

``flops_per_img_iter`` is one Adam step for one image, counted from the layer shapes (2 FLOPs
per multiply-add): G forward, the discriminator's feature layers forward (its logit too with
``--dis_loss gan``) and the input gradients of both (one forward's worth each: the loss only
needs dL/dz, no weight gradients). The discriminator's features of the input images, computed
once per search, are left out. ``matmul_gflops`` is a large dense ``tf.matmul`` measured before
and after the searches (their mean); ``roofline_ratio`` = batched FLOP/s / matmul FLOP/s, and
``speedup_at_matmul_rate`` the speedup a batched search running at the matmul rate would reach.
"""

import tempfile
import time

import common
import numpy as np

import model
from config import ModelConfig, SearchConfig


def parse_args(argv=None):
    parser = common.shape_parser(__doc__.splitlines()[0], steps=20, threads=True)
    parser.add_argument("--per_image", type=int, default=8, help="images searched one by one")
    parser.add_argument("--dis_loss", choices=("feature", "gan"), default="feature")
    parser.add_argument("--repeats", type=int, default=3, help="turns of each measurement")
    return parser.parse_args(argv)


def search_flops(dcgan, dis_loss):
    """FLOPs of one search step for one image (see the module docstring)."""
    discriminator = common.model_flops(dcgan.discriminator)
    features = discriminator if dis_loss == "gan" else discriminator[:-1]
    return 2 * (sum(common.model_flops(dcgan.generator)) + sum(features))


def timed_search(dcgan, images, z0, search):
    """Seconds to search ``images`` from ``z0`` in one call."""
    labels = np.zeros((len(images), 0), np.float32)
    started = time.perf_counter()
    dcgan.search(images, labels, z0, search)
    return time.perf_counter() - started


def main(argv=None):
    args = parse_args(argv)
    common.configure_threads(args.intra_threads, args.inter_threads)
    width = args.width or args.height
    rng = np.random.default_rng(args.seed)
    count = max(args.batch, args.per_image)
    images = rng.uniform(-1, 1, (count, args.height, width, args.channels)).astype(np.float32)
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        dcgan = model.DCGAN(ModelConfig(args.height, width, args.channels), checkpoint_dir)
        z0 = rng.uniform(-1, 1, (count, dcgan.config.z_dim)).astype(np.float32)
        search = SearchConfig(steps=args.steps, dis_loss=args.dis_loss)
        timed_search(dcgan, images[:1], z0[:1], search)  # traces the search, for any batch
        matmul = [common.matmul_gflops(seconds=args.matmul_seconds)]
        singles, batches = [], []
        for _ in range(args.repeats):
            singles.append(sum(timed_search(dcgan, images[i:i + 1], z0[i:i + 1], search)
                               for i in range(args.per_image)))
            batches.append(timed_search(dcgan, images[:args.batch], z0[:args.batch], search))
        matmul.append(common.matmul_gflops(seconds=args.matmul_seconds))
    flops = search_flops(dcgan, args.dis_loss)
    per_image = args.per_image * args.steps / min(singles)
    batched = args.batch * args.steps / min(batches)
    matmul_mean = sum(matmul) / len(matmul)
    common.print_json({
        "height": args.height, "width": width, "channels": args.channels, "batch": args.batch,
        "steps": args.steps, "dis_loss": args.dis_loss, "per_image_images": args.per_image,
        "repeats": args.repeats,
        "per_image_img_iter_per_s": round(per_image, 2),
        "batched_img_iter_per_s": round(batched, 2),
        "speedup": round(batched / per_image, 2),
        "flops_per_img_iter": flops,
        "per_image_gflops": round(per_image * flops / 1e9, 2),
        "batched_gflops": round(batched * flops / 1e9, 2),
        "matmul_gflops": round(matmul_mean, 2),
        "matmul_gflops_samples": [round(m, 2) for m in matmul],
        "per_image_roofline_ratio": round(per_image * flops / 1e9 / matmul_mean, 3),
        "roofline_ratio": round(batched * flops / 1e9 / matmul_mean, 3),
        "speedup_at_matmul_rate": round(matmul_mean * 1e9 / (per_image * flops), 2),
        **common.environment()})


if __name__ == "__main__":
    main()
