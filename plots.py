"""The anomaly test's figures (matplotlib, Agg): the score histogram, the ROC curve, the t-SNE
of the final z and the overview of the worst images (input | G(z) | anomaly map | mask).

evaluation.py imports this module only when it draws them, so that nothing else imports
matplotlib through this project.
"""

import matplotlib
import numpy as np

import utils
from inputs import LABEL_NAMES

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABEL_STYLES = {label: (name, colour) for (label, name), colour in
                zip(LABEL_NAMES.items(), ("tab:blue", "tab:red", "gray"))}
"""Each label's name and colour in the figures."""


def heat_overlay(image, residual):
    """The input in gray with its residual in red on top (the paper's figure), in [0, 1]."""
    gray = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    heat = residual.mean(axis=-1, keepdims=True)
    heat = heat / max(float(heat.max()), 1e-8)
    red = np.concatenate([np.ones_like(heat), np.zeros_like(heat), np.zeros_like(heat)], -1)
    return gray * (1.0 - 0.7 * heat) + red * 0.7 * heat


def save(figure, path):
    """Saves a matplotlib figure as PNG atomically and closes it."""
    with utils.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def histogram(scores, labels, threshold, path):
    """The scores of normal, anomalous and unlabelled images, and the threshold."""
    figure, axes = plt.subplots(figsize=(6, 4))
    finite = np.isfinite(scores)
    bins = np.histogram_bin_edges(scores[finite], bins=40) if finite.any() else 10
    for value, (name, color) in LABEL_STYLES.items():
        chosen = scores[(labels == value) & finite]
        if len(chosen):
            axes.hist(chosen, bins=bins, alpha=0.6, color=color, label=f"{name} ({len(chosen)})")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="anomaly score", ylabel="images", title="Anomaly scores")
    axes.legend()
    save(figure, path)


def roc(scores, labels, auc, path):
    """The ROC curve of labelled scores, with its AUC."""
    from sklearn.metrics import roc_curve

    finite = np.isfinite(scores)
    fpr, tpr, _ = roc_curve(labels[finite], scores[finite])
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(fpr, tpr, color="tab:red", label=f"AUC {auc:.4f}")
    axes.plot([0, 1], [0, 1], color="gray", linestyle=":")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    axes.legend(loc="lower right")
    save(figure, path)


def tsne(z, labels, path, limit=1000, seed=0):
    """t-SNE of the final latent codes, coloured by label (at most ``limit`` points, drawn
    reproducibly: enough to see the structure, and seconds instead of tens of them)."""
    from sklearn.manifold import TSNE

    if len(z) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(z), limit, replace=False))
        z, labels = z[keep], labels[keep]
    finite = np.isfinite(z).all(axis=1)
    z, labels = z[finite], labels[finite]
    embedded = TSNE(2, perplexity=min(30.0, (len(z) - 1) / 3.0), init="pca",
                    random_state=seed).fit_transform(z)
    figure, axes = plt.subplots(figsize=(5, 5))
    for value, (name, color) in LABEL_STYLES.items():
        chosen = labels == value
        if chosen.any():
            axes.scatter(*embedded[chosen].T, s=8, color=color, label=name)
    axes.set(title="t-SNE of the final z (searched, or E(x))", xticks=[], yticks=[])
    axes.legend()
    save(figure, path)


def overview(worst, source, value_range, path, mask_spec=None):
    """Input | G(z) | anomaly map as a heat map for the most anomalous images, worst first;
    with ``mask_spec``, a fourth panel with the ground-truth mask, whose outline is also drawn
    on the heat map."""
    columns = 3 if mask_spec is None else 4
    figure, axes = plt.subplots(len(worst), columns, figsize=(2 * columns, 2 * len(worst)),
                                squeeze=False)
    for row, (score, index, image, fake, anomaly_map) in zip(axes, worst):
        image = utils.rescale(np.asarray(image), value_range)
        fake = utils.rescale(np.asarray(fake), value_range)
        anomaly_map = np.asarray(anomaly_map)
        mask = (utils.load_mask(source.masks[index], mask_spec, anomaly_map.shape)
                if mask_spec is not None else None)
        panels = (image, fake, heat_overlay(image, anomaly_map[..., None]), mask)
        for axis, panel, title in zip(row, panels, ("input", "G(z)", "anomaly map", "mask")):
            axis.imshow(np.clip(np.asarray(panel, np.float32).squeeze(), 0, 1), cmap="gray",
                        vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(title, fontsize=8)
        if mask is not None and mask.any():
            row[2].contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
        row[0].set_ylabel(f"{source.names[index]}\nscore {score:.4g}", fontsize=7)
    save(figure, path)
