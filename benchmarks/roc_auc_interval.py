"""How far a mean ROC AUC over runs can be trusted: a bootstrap interval over the test images.

    python benchmarks/roc_auc_interval.py RUN/scores.csv [RUN2/scores.csv ...]
        [--resamples 2000] [--seed 0] [--reference 0.964]

Each argument is the ``scores.csv`` of one ``--anomaly_test``: the runs of one digit over seeds,
say. Prints JSON: each run's ROC AUC; their mean, standard deviation and the mean's standard
error over runs (what another seed moves); and the 95% interval of that mean when the test
images are drawn again (what another test sample moves): normal and anomalous images are
resampled separately, with one draw for all runs when they scored the very same images
(``"draw": "shared"``), else each run's own (``"per_run"``; ``mnist_one_class.py``'s seeds each
draw their own 1,000). With ``--reference`` (a published figure), the share of those resampled
means at or above it.
"""

import argparse
import csv
import json
import statistics
import sys

import numpy as np


def read_scores(path):
    """``{file: (label, anomaly_score)}`` of one ``scores.csv``, unlabelled rows left out; exits
    with one line naming the file when it cannot be read as one."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"file", "label", "anomaly_score"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"no column {', '.join(sorted(missing))}")
            return {row["file"]: (int(row["label"]), float(row["anomaly_score"]))
                    for row in reader if row["label"] in ("0", "1")}
    except (OSError, TypeError, ValueError) as error:
        sys.exit(f"error: {path} is not a readable scores.csv ({error})")


def roc_auc(normal_scores, anomalous_scores):
    """Mann-Whitney ROC AUC: the share of (normal, anomalous) pairs ranked right, ties half."""
    pairs = anomalous_scores[:, None] - normal_scores[None, :]
    return float((pairs > 0).mean() + 0.5 * (pairs == 0).mean())


def split_by_label(run, files):
    """The run's scores of ``files``: (normal, anomalous) arrays."""
    labels = np.array([run[name][0] for name in files])
    scores = np.array([run[name][1] for name in files])
    return scores[labels == 0], scores[labels == 1]


def draw_plan(runs):
    """'shared' when every run scored the same images (one draw serves them all), else
    'per_run' (each run's images drawn on their own); and each run's (normal, anomalous)."""
    names = [sorted(run) for run in runs]
    shared = all(files == names[0] for files in names)
    if shared and any(len({run[name][0] for run in runs}) > 1 for name in names[0]):
        sys.exit("error: the runs label the same test image differently")
    return ("shared" if shared else "per_run"), [split_by_label(run, files)
                                                 for run, files in zip(runs, names)]


def bootstrap_means(plan, splits, resamples, rng):
    """Mean ROC AUC over runs for each of ``resamples`` draws of the test images (normal and
    anomalous ones drawn separately, with replacement)."""
    def draw(size):
        return rng.integers(0, size, size)

    means = np.empty(resamples)
    for i in range(resamples):
        if plan == "shared":
            n, a = draw(len(splits[0][0])), draw(len(splits[0][1]))
            aucs = [roc_auc(normal[n], anomalous[a]) for normal, anomalous in splits]
        else:
            aucs = [roc_auc(normal[draw(len(normal))], anomalous[draw(len(anomalous))])
                    for normal, anomalous in splits]
        means[i] = np.mean(aucs)
    return means


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", help="scores.csv of each run")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=float, default=None, help="a published ROC AUC")
    args = parser.parse_args(argv)
    runs = [read_scores(path) for path in args.scores]
    plan, splits = draw_plan(runs)
    if any(len(normal) == 0 or len(anomalous) == 0 for normal, anomalous in splits):
        sys.exit("error: each run needs both normal (label 0) and anomalous (label 1) test images")
    per_run = np.array([roc_auc(normal, anomalous) for normal, anomalous in splits])
    means = bootstrap_means(plan, splits, args.resamples, np.random.default_rng(args.seed))
    sd = round(statistics.stdev(per_run), 4) if len(runs) > 1 else None
    result = {
        "runs": len(runs), "draw": plan,
        "normal_images": [len(normal) for normal, _ in splits],
        "anomalous_images": [len(anomalous) for _, anomalous in splits],
        "roc_auc": [round(float(v), 4) for v in per_run],
        "mean": round(float(per_run.mean()), 4),
        "sd_over_runs": sd,
        "se_of_mean_over_runs": None if sd is None else round(sd / len(runs) ** 0.5, 4),
        "interval_95_over_images": [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])],
        "resamples": args.resamples,
    }
    if args.reference is not None:
        result["reference"] = args.reference
        result["share_at_or_above_reference"] = round(float((means >= args.reference).mean()), 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
