"""Training throughput (images/s) of the compiled DCGAN or WGAN-GP step, against the roofline.

    python benchmarks/train_step.py [--height 28 --channels 1 --batch 64 --steps 5]
        [--record benchmarks/results/train_step/NAME.json]

Prints one JSON object (and writes it, with the command, commit, date and machine, to
``--record``), measured in this one process: ``--steps`` calls of the compiled step
that ``DCGAN.train`` runs (``DCGAN.train_step_fn``) on random images, after one call that
traces it, between two measurements of a large dense ``tf.matmul``.

FLOPs per trained image are counted from the layer shapes (2 per multiply-add; batch norm and
activations left out), with G and D the forward FLOPs of the generator and the discriminator
(logit included), G0 and D0 those of their first layers. A backward pass costs one forward per
gradient it needs: of the layer's input, of its weights, or both.

- D update: G forward, D forward on real and on fake images (G + 2D); D's weight gradients for
  both (2D) and its input gradients except the first layer's, as the images need none
  (2(D - D0)).
- G update, twice: G and D forward (G + D); D's input gradients (D), G's weight gradients (G)
  and G's input gradients except the first layer's, as z needs none (G - G0).

Total: 7G + 10D - 2 D0 - 2 G0.

With ``--gan wgan_gp`` a step is one critic update, and G is updated after every ``n_critic``
(5) of them, so per image and step (an estimate: the gradient penalty's second-order backward
pass counted as twice the first-order graph it differentiates):
- critic update: G forward; D forward on real and fake (2D), their weight gradients (2D) and
  input gradients but the first layer's (2(D - D0)); D forward on the interpolates and its input
  gradient (2D); the penalty's weight gradients through that (4D): G + 12D - 2 D0;
- G update: G + D forward, D's input gradients (D), G's weight and input gradients (2G - G0):
  3G + 2D - G0, divided by ``n_critic``.
"""

import tempfile
import time

import common
import numpy as np
import tensorflow as tf

import model
from config import GANS, ModelConfig, TrainConfig


def parse_args(argv=None):
    parser = common.shape_parser(__doc__.splitlines()[0], steps=5, threads=True)
    parser.add_argument("--gan", choices=GANS, default="dcgan")
    parser.add_argument("--gf_dim", type=int, default=64)
    parser.add_argument("--df_dim", type=int, default=64)
    parser.add_argument("--record", default=None, help="a JSON file for the figures")
    return parser.parse_args(argv)


def train_flops(dcgan):
    """FLOPs of one training step per image (see the module docstring)."""
    g_layers = common.model_flops(dcgan.generator)
    d_layers = common.model_flops(dcgan.discriminator)
    g, d = sum(g_layers), sum(d_layers)
    if dcgan.config.gan == "wgan_gp":
        critic = g + 12 * d - 2 * d_layers[0]
        return critic + (3 * g + 2 * d - g_layers[0]) / dcgan.train_config.n_critic
    return 7 * g + 10 * d - 2 * d_layers[0] - 2 * g_layers[0]


def main(argv=None):
    args = parse_args(argv)
    common.configure_threads(args.intra_threads, args.inter_threads)
    width = args.width or args.height
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        dcgan = model.DCGAN(ModelConfig(args.height, width, args.channels, gf_dim=args.gf_dim,
                                        df_dim=args.df_dim, gan=args.gan), checkpoint_dir,
                            TrainConfig(gan=args.gan))
    images = tf.constant(rng.uniform(-1, 1, (args.batch, args.height, width, args.channels)),
                         tf.float32)
    labels = tf.zeros((args.batch, 0))
    z = tf.constant(rng.uniform(-1, 1, (args.batch, dcgan.config.z_dim)), tf.float32)
    step = dcgan.train_step_fn(args.batch)
    [loss.numpy() for loss in step(images, labels, z).values()]
    matmul = [common.matmul_gflops(seconds=args.matmul_seconds)]
    started = time.perf_counter()
    for _ in range(args.steps):
        losses = step(images, labels, z)
    [loss.numpy() for loss in losses.values()]
    seconds = time.perf_counter() - started
    matmul.append(common.matmul_gflops(seconds=args.matmul_seconds))
    flops = train_flops(dcgan)
    images_per_s = args.batch * args.steps / seconds
    matmul_mean = sum(matmul) / len(matmul)
    figures = {
        "gan": args.gan, "gf_dim": args.gf_dim, "df_dim": args.df_dim,
        "height": args.height, "width": width, "channels": args.channels, "batch": args.batch,
        "steps": args.steps, "images_per_s": round(images_per_s, 2),
        "steps_per_s": round(args.steps / seconds, 3),
        "flops_per_image": flops, "gflops": round(images_per_s * flops / 1e9, 2),
        "matmul_gflops": round(matmul_mean, 2),
        "matmul_gflops_samples": [round(m, 2) for m in matmul],
        "roofline_ratio": round(images_per_s * flops / 1e9 / matmul_mean, 3),
        **common.environment()}
    if args.record:
        common.write_record(args.record, {
            "benchmark": "train_step",
            **common.provenance(common.script_command("train_step.py", argv)), **figures})
    common.print_json(figures)


if __name__ == "__main__":
    main()
