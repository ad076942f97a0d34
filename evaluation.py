"""The anomaly test's outputs and metrics.

What it owns: ``AnomalyReport`` (per-image AD_/AD_error_ PNGs written in the background,
scores.csv, metrics.json and the plots, in a staging folder published whole), the residual maps,
the metrics (ROC and PR AUC, F1, the pixel-level ``PixelROC`` and ``RegionOverlap`` (PRO), the
per-defect-type AUC) and the
results in TensorBoard (``log_results``). The figures are drawn by plots.py, imported only when
they are.
"""

import csv
import heapq
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

import inputs
import losses
import utils

SCORE_COLUMNS = ("file", "label", "anomaly_score", "residual_loss", "discrimination_loss",
                 "is_anomaly")


def result_name(name):
    """A flat PNG file name for an input image's (relative) name."""
    return Path(name.replace("/", "_").replace("\\", "_")).stem + ".png"


def unique_result_names(names):
    """``result_name`` of each input, made distinct where two flatten alike (anomaly/000.png
    and anomaly_000.png; compared without case): later ones get a -2, -3, ... suffix."""
    seen, unique = set(), []
    for name in names:
        base = candidate = result_name(name)
        count = 1
        while candidate.lower() in seen:
            count += 1
            candidate = f"{Path(base).stem}-{count}.png"
        seen.add(candidate.lower())
        unique.append(candidate)
    return unique


def residual_map(images, fakes, value_range):
    """|x - G(z)| scaled to [0, 1], as the original's AD_error images."""
    low, high = value_range
    return np.abs(np.asarray(images) - np.asarray(fakes)) / (high - low)


def anomaly_maps(images, fakes, value_range, shift=0, kind="l1"):
    """``losses.anomaly_map`` of NumPy batches, as a NumPy array (n, h, w)."""
    return losses.anomaly_map(np.asarray(images), np.asarray(fakes), value_range, kind,
                              shift).numpy()


class PixelROC:
    """ROC AUC over every pixel of every test image, streamed in flat memory.

    Per-pixel scores in [0, 1] are counted into ``bins`` equal bins, for defective and for
    normal pixels; pairs within one bin count as ties (half), so the AUC is exact at the bins'
    resolution (1/4096 of the range by default).
    """

    def __init__(self, bins=4096):
        self.bins = bins
        self.defective = np.zeros(bins, np.int64)
        self.normal = np.zeros(bins, np.int64)

    def add(self, maps, masks):
        """Counts the pixels of ``maps`` (n, h, w) in [0, 1] by their masks (n, h, w) bool."""
        index = np.clip((np.asarray(maps) * self.bins).astype(np.int64), 0, self.bins - 1)
        self.defective += np.bincount(index[masks], minlength=self.bins)
        self.normal += np.bincount(index[~masks], minlength=self.bins)

    def auc(self):
        """The ROC AUC, or None unless both kinds of pixel were seen."""
        defective, normal = self.defective.sum(), self.normal.sum()
        if not defective or not normal:
            return None
        below = np.cumsum(self.normal) - self.normal
        return float((self.defective * (below + 0.5 * self.normal)).sum()
                     / (float(defective) * float(normal)))


class RegionOverlap:
    """MVTec AD's per-region overlap (PRO, Bergmann et al. 2021), streamed in flat memory per
    defect region: the mean over every connected defect region of the share of its pixels
    above a threshold, against the false positive rate of normal pixels, integrated up to a
    false positive rate of ``limit`` and divided by it. Map values are counted into ``bins``
    equal bins of [0, 1], as ``PixelROC``'s; thresholds are the bins' edges."""

    def __init__(self, bins=4096, limit=0.3):
        self.bins, self.limit = bins, limit
        self.normal = np.zeros(bins, np.int64)
        self.regions = []

    def add(self, maps, masks):
        """Counts the pixels of ``maps`` (n, h, w) in [0, 1]: normal ones, and each connected
        region of the masks (n, h, w) bool on its own."""
        from scipy import ndimage

        index = np.clip((np.asarray(maps) * self.bins).astype(np.int64), 0, self.bins - 1)
        for image_index, mask in zip(index, np.asarray(masks, bool)):
            self.normal += np.bincount(image_index[~mask], minlength=self.bins)
            labelled, count = ndimage.label(mask)
            for label in range(1, count + 1):
                counts = np.bincount(image_index[labelled == label], minlength=self.bins)
                self.regions.append(counts / counts.sum())

    def auc(self):
        """The normalised area under the PRO curve up to ``limit``, or None without both
        defect regions and normal pixels."""
        if not self.regions or not self.normal.sum():
            return None
        above = np.cumsum(self.normal[::-1])[::-1] / self.normal.sum()  # FPR at each bin edge
        overlap = np.mean([np.cumsum(r[::-1])[::-1] for r in self.regions], axis=0)
        fpr, pro = np.append(above[::-1], 1.0), np.append(overlap[::-1], 1.0)
        inside = fpr <= self.limit
        cut_pro = np.interp(self.limit, fpr, pro)
        xs = np.append(np.concatenate([[0.0], fpr[inside]]), self.limit)
        ys = np.append(np.concatenate([[0.0], pro[inside]]), cut_pro)
        return float(np.trapezoid(ys, xs) / self.limit)


class BackgroundWriter:
    """Runs writing jobs on one background thread, at most ``pending`` at a time.

    File writes overlap the next batch's computation; ``submit`` waits while ``pending`` jobs
    are queued (memory stays flat) and ``close`` waits for all and ends the thread. A failed
    job's error is raised by the next ``submit`` or ``close``.
    """

    def __init__(self, pending=2):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending = pending
        self.jobs = []

    def submit(self, fn, *args):
        while len(self.jobs) >= self.pending:
            self.jobs.pop(0).result()
        self.jobs.append(self.pool.submit(fn, *args))

    def close(self):
        try:
            while self.jobs:
                self.jobs.pop(0).result()
        finally:
            self.pool.shutdown()


class AnomalyReport:
    """Writes the anomaly test's outputs as batches arrive, and its summary at the end.

    Everything is written into a hidden staging folder beside ``result_dir``, which replaces
    ``result_dir`` whole at the end: a run's results appear together or not at all. The caller
    holds ``runtime.output_lock`` of ``result_dir``, so the staging folders a killed run left
    behind are removed here. Per image
    it writes the original's AD_/AD_error_ PNGs at once (distinct names even where two inputs'
    flattened names are alike); scores go to a partial CSV as they come, and ``finish`` writes
    scores.csv (with ``is_anomaly``), metrics.json and the plots, then publishes the folder.
    When the source has ground-truth masks, ``mask_spec`` (the images' ``ImageSpec``) reads
    them batch by batch for the pixel-level ROC AUC. Memory stays flat: only scalars, final z,
    pixel histograms and the few worst images for the overview are kept.
    """

    def __init__(self, result_dir, source, value_range, overview_rows=8, mask_spec=None,
                 figures=True):
        self.final_dir = Path(result_dir)
        self.figures = figures
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in (*self.final_dir.parent.glob(f".{self.final_dir.name}.partial-*"),
                      *self.final_dir.parent.glob(f".{self.final_dir.name}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)
        self.result_dir = Path(tempfile.mkdtemp(prefix=f".{self.final_dir.name}.partial-",
                                                dir=self.final_dir.parent))
        self.output_names = unique_result_names(source.names)
        self.images_written = BackgroundWriter()
        self.source, self.value_range, self.overview_rows = source, value_range, overview_rows
        self.mask_spec = mask_spec if source.masks is not None else None
        self.pixels = PixelROC()
        self.partial_path = self.result_dir / ".scores.partial.csv"
        self.partial = open(self.partial_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.partial_csv = csv.writer(self.partial)
        self.partial_csv.writerow(SCORE_COLUMNS[:-1])
        self.scores, self.residuals, self.discriminations, self.z = [], [], [], []
        self.regions = RegionOverlap()
        self.worst = []
        self.threshold = None

    def __len__(self):
        return sum(len(s) for s in self.scores)

    def add(self, images, result, maps=None):
        """Records one batch: its inputs (in the model's value range), ``SearchResult`` and
        anomaly maps of the final G(z), those its scores used (``anomaly_maps``; the plain
        |x - G(z)| map when not given)."""
        start = len(self)
        names = self.source.names[start:start + len(images)]
        labels = self._labels()[start:start + len(images)]
        self.images_written.submit(self._save_images,
                                   self.output_names[start:start + len(images)],
                                   result.snapshots,
                                   {step: residual_map(images, fakes, self.value_range)
                                    for step, fakes in result.snapshots.items()})
        for row in zip(names, labels, result.score, result.residual, result.discrimination):
            self.partial_csv.writerow([row[0], "" if row[1] < 0 else int(row[1]),
                                       *(f"{v:.6g}" for v in row[2:])])
        self.partial.flush()
        self.scores.append(result.score)
        self.residuals.append(result.residual)
        self.discriminations.append(result.discrimination)
        self.z.append(result.z)
        final = result.final
        if maps is None:
            maps = anomaly_maps(images, final, self.value_range)
        if self.mask_spec is not None:
            masks = self.source.masks[start:start + len(images)]
            known = [m is not None or label == 0 for m, label in zip(masks, labels)]
            if any(known):
                known_masks = np.stack([utils.load_mask(m, self.mask_spec, maps.shape[1:3])
                                        for m, k in zip(masks, known) if k])
                self.pixels.add(maps[known], known_masks)
                self.regions.add(maps[known], known_masks)
        for offset, score in enumerate(result.score):
            score = float(score) if np.isfinite(score) else -np.inf
            entry = (score, start + offset, images[offset], final[offset], maps[offset])
            if len(self.worst) < self.overview_rows:
                heapq.heappush(self.worst, entry)
            elif score > self.worst[0][0]:
                heapq.heapreplace(self.worst, entry)

    def _save_images(self, names, snapshots, errors):
        """The original's AD_<step>_<name> (G(z)) and AD_error_<step>_<name> PNGs of a batch."""
        for step, fakes in snapshots.items():
            fakes = utils.to_pixels(utils.rescale(np.asarray(fakes), self.value_range))
            for name, fake, error in zip(names, fakes, utils.to_pixels(errors[step])):
                utils.save_png(fake, self.result_dir / f"AD_{step}_{name}")
                utils.save_png(error, self.result_dir / f"AD_error_{step}_{name}")

    def _labels(self):
        if self.source.labels is None:
            return np.full(len(self.source), -1, np.int64)
        return self.source.labels

    def all_scores(self):
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)

    def normal_scores(self):
        """Scores of the images labelled normal."""
        labels = self._labels()[:len(self)]
        return self.all_scores()[labels == 0]

    def non_finite(self):
        """Names of images whose score is NaN or infinite."""
        return [self.source.names[i] for i in np.flatnonzero(~np.isfinite(self.all_scores()))]

    def finish(self, threshold, threshold_source, extra, tensorboard=None):
        """Writes scores.csv, metrics.json and (unless ``figures`` is off) the plots; returns
        the metrics.

        ``tensorboard``: (log_dir, step, name) to log the results there too (``log_results``).
        """
        self.images_written.close()
        self.partial.close()
        self.threshold = threshold
        scores = self.all_scores()
        labels = self._labels()[:len(scores)]
        flagged = scores > threshold
        rows = zip(self.source.names, labels, scores, np.concatenate(self.residuals),
                   np.concatenate(self.discriminations), flagged)
        with (utils.atomic_path(self.result_dir / "scores.csv") as tmp,
              open(tmp, "w", newline="", encoding="utf-8") as handle):
            writer = csv.writer(handle)
            writer.writerow(SCORE_COLUMNS)
            for name, label, score, residual, discrimination, anomalous in rows:
                writer.writerow([name, "" if label < 0 else int(label), f"{score:.6g}",
                                 f"{residual:.6g}", f"{discrimination:.6g}", int(anomalous)])
        os.remove(self.partial_path)
        metrics = {"n": len(scores), "n_anomalous": int(flagged.sum()),
                   "n_labelled_anomalous": int((labels == 1).sum()),
                   **evaluate(scores, labels, flagged),
                   "pixel_roc_auc": self.pixels.auc(), "pro_auc": self.regions.auc(),
                   "per_type_roc_auc": per_type_roc_auc(self.source.names[:len(scores)], scores,
                                                        labels),
                   "threshold": float(threshold), "threshold_source": threshold_source,
                   **extra, "non_finite": self.non_finite()}
        utils.write_json(self.result_dir / "metrics.json", metrics)
        if self.figures:
            self._plots(scores, labels, threshold, metrics)
        self._publish()
        if tensorboard is not None:
            log_dir, step, name = tensorboard
            try:
                log_results(log_dir, step, name, scores, labels, metrics,
                            self.result_dir / "overview.png")
            except (OSError, tf.errors.OpError) as error:
                print(f"warning: the results are in {self.result_dir}, but TensorBoard's copy "
                      f"could not be written to {log_dir} ({str(error).splitlines()[0]})",
                      file=sys.stderr)
        return metrics

    def _publish(self):
        """Replaces the results folder by the staging folder (two renames)."""
        old = self.final_dir.with_name(f".{self.final_dir.name}.old-{os.getpid()}")
        if self.final_dir.exists():
            os.replace(self.final_dir, old)
        os.replace(self.result_dir, self.final_dir)
        shutil.rmtree(old, ignore_errors=True)
        self.result_dir = self.final_dir

    def rows(self):
        """(name, score, is_anomaly) of every scored image, once ``finish`` has run."""
        scores = self.all_scores()
        return list(zip(self.source.names, scores, scores > self.threshold))

    def _plots(self, scores, labels, threshold, metrics):
        import plots  # matplotlib, only when plots are drawn

        plots.histogram(scores, labels, threshold, self.result_dir / "scores_hist.png")
        plots.overview(sorted(self.worst, reverse=True), self.source, self.value_range,
                      self.result_dir / "overview.png", self.mask_spec)
        known = labels >= 0
        if metrics["roc_auc"] is not None:
            plots.roc(scores[known], labels[known], metrics["roc_auc"],
                     self.result_dir / "roc.png")
        if known.sum() >= 5:
            plots.tsne(np.concatenate(self.z)[known], labels[known], self.result_dir / "tsne.png")


def log_results(log_dir, step, name, scores, labels, metrics, overview_path):
    """The anomaly test's results as TensorBoard summaries under ``test/<name>/``.

    Metrics as scalars, score histograms per label, the precision-recall curve (TensorBoard's
    pr_curve plugin; scores min-max scaled to [0, 1], which keeps their order) when both labels
    are known, and the overview grid as an image, at the model's training ``step``.
    """
    from tensorboard.plugins.pr_curve import summary as pr_curve

    prefix = f"test/{name}"
    finite = np.isfinite(scores)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=step):
        for key in ("roc_auc", "pr_auc", "f1", "threshold", "n_anomalous", "images_per_second"):
            if metrics.get(key) is not None:
                tf.summary.scalar(f"{prefix}/{key}", metrics[key])
        for value, label_name in inputs.LABEL_NAMES.items():
            chosen = scores[finite & (labels == value)]
            if len(chosen):
                tf.summary.histogram(f"{prefix}/scores_{label_name}", chosen)
        known = finite & (labels >= 0)
        if metrics.get("roc_auc") is not None:
            ranked = scores[known]
            unit = (ranked - ranked.min()) / max(float(ranked.max() - ranked.min()), 1e-12)
            summary = pr_curve.pb(prefix, labels[known].astype(bool), unit,
                                  num_thresholds=201)
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)
        if Path(overview_path).exists():  # not with --no_figures
            with Image.open(overview_path) as image:
                tf.summary.image(f"{prefix}/overview", np.asarray(image.convert("RGB"))[None])
    writer.close()


def evaluate(scores, labels, flagged):
    """Over the labelled images: ROC AUC, PR AUC, and precision, recall and F1 of ``flagged``
    (the threshold's verdicts), with ``oracle_best_f1``, the best F1 of any threshold (read
    from these labels, so not a figure a threshold chosen without them can promise); None
    without both classes."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    known = (labels >= 0) & np.isfinite(scores)
    y, s = labels[known], scores[known]
    if len(np.unique(y)) < 2:
        return dict.fromkeys(("roc_auc", "pr_auc", "precision", "recall", "f1",
                              "oracle_best_f1"))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, flagged[known], average="binary", zero_division=0)
    curve_precision, curve_recall, _ = precision_recall_curve(y, s)
    denominator = np.maximum(curve_precision + curve_recall, 1e-12)
    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s)),
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "oracle_best_f1": float(np.max(2 * curve_precision * curve_recall / denominator))}


def per_type_roc_auc(names, scores, labels):
    """Image-level ROC AUC of the normal images against each defect type (first folder), or
    None without both normal images and anomalous ones in named folders (MNIST's split has
    none)."""
    from sklearn.metrics import roc_auc_score

    types = np.array([inputs.defect_type(name) for name in names])
    finite = np.isfinite(scores)
    normal = finite & (labels == 0)
    defects = sorted(set(types[finite & (labels == 1)]) - {""})
    if not normal.any() or not defects:
        return None
    return {kind: float(roc_auc_score(labels[chosen], scores[chosen]))
            for kind in defects for chosen in [normal | (finite & (types == kind))]}
