"""How much of G(E(x))'s residual on held-out normal images each --residual_shift forgives.

    python benchmarks/residual_shift.py --max_shift 6 -- <main.py flags of a trained model>

No labels: the held-out tenth of the training images (as the health check holds out) is
scored in one pass from E(x), and their mean anomaly map is printed per shift, with the
fraction of the unshifted residual it leaves. Misregistration (G drawing lines a few pixels
off) shows as a steep fall over the first pixels; the shift where the fall flattens is the one
to declare.
"""
import argparse

import common
import numpy as np

import evaluation
import jobs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_shift", type=int, default=6)
    parser.add_argument("main_flags", nargs=argparse.REMAINDER,
                        help="after --: main.py flags of the trained model (its --dataset, "
                             "--checkpoint_dir and network flags)")
    args = parser.parse_args(argv)
    args.main_flags = [flag for flag in args.main_flags if flag != "--"]
    return args


class Reconstructions:
    """Collects what ``jobs.score_source`` reports: the images and their final G(z)."""

    def __init__(self):
        self.images, self.fakes = [], []

    def add(self, images, result, maps):
        self.images.append(np.asarray(images))
        self.fakes.append(np.asarray(result.final))


def held_out_reconstructions(main_flags):
    """The held-out training images and G(E(x)) of them, in the model's value range."""
    job = common.anogan.resolve(common.anogan.build_parser().parse_args(
        [*main_flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0"]))
    dcgan = jobs.trained_model(job)
    jobs.check_encoder(dcgan)
    _, _, held_out = job.data.training_split()
    collected = Reconstructions()
    jobs.score_source(job, dcgan, held_out, job.search_config, collected)
    return (np.concatenate(collected.images), np.concatenate(collected.fakes),
            dcgan.config.value_range)


def main(argv=None):
    args = parse_args(argv)
    images, fakes, value_range = held_out_reconstructions(args.main_flags)
    means = {shift: float(evaluation.anomaly_maps(images, fakes, value_range, shift).mean())
             for shift in range(args.max_shift + 1)}
    common.print_json({
        "held_out_images": len(images),
        "mean_map": {str(k): round(v, 6) for k, v in means.items()},
        "fraction_left": {str(k): round(v / means[0], 4) for k, v in means.items()},
        **common.environment()})


if __name__ == "__main__":
    main()
