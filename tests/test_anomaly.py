"""The AnoGAN anomaly test on a tiny model trained for real: search, scores, files, metrics."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_images, write_mnist
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

import evaluation
import inputs
import main
import model
import utils
from config import ModelConfig, SearchConfig
from search import SearchResult, starting_z

TINY = ["--gf_dim", "8", "--df_dim", "8", "--retries", "0", "--encoder_min_steps", "0", "--encoder_patience", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DCGAN trained briefly on 28x28 ring images; returns the flags that find it."""
    root = tmp_path_factory.mktemp("anogan")
    write_images(root / "data" / "rings", 24, 28, kind=0)
    flags = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--input_height", "28",
             "--output_height", "28", "--batch_size", "8", "--z_dim", "16", *TINY,
             "--data_dir", str(root / "data"), "--checkpoint_dir", str(root / "checkpoint"),
             "--sample_dir", str(root / "samples"), "--log_dir", str(root / "logs")]
    assert main.main([*flags, "--epoch", "2", "--train"]) == 0
    return root, flags


def anomaly_test(flags, test_dir, *extra, figures=False):
    """main.py's anomaly test of ``test_dir``; the figures only when a test looks at them."""
    return main.main([*flags, "--anomaly_test", "--test_dir", str(test_dir), "--test_epoch", "4",
                      "--test_batch_size", "4", *map(str, extra),
                      *([] if figures else ["--no_figures"])])


def read_scores(result_dir):
    with open(result_dir / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def labelled_test_dir(root):
    test_dir = root / "labelled"
    write_images(test_dir / "normal", 5, 28, kind=0, seed=7)
    write_images(test_dir / "anomaly", 4, 28, kind=4, seed=8)
    return test_dir


def test_labelled_folder_writes_every_output(trained):
    root, flags = trained
    test_dir = labelled_test_dir(root)
    assert anomaly_test(flags, test_dir, figures=True) == 0
    result_dir = test_dir / "test_result"
    rows = read_scores(result_dir)
    assert list(rows[0]) == list(evaluation.SCORE_COLUMNS)
    names = [r["file"] for r in rows]
    assert names == sorted(names) and len(rows) == 9
    assert [r["label"] for r in rows] == ["1"] * 4 + ["0"] * 5
    for row in rows:
        score, residual, dis = (float(row[k]) for k in
                                ("anomaly_score", "residual_loss", "discrimination_loss"))
        assert score == pytest.approx(0.9 * residual + 0.1 * dis, rel=1e-4)
        stem = row["file"].replace("/", "_").rsplit(".", 1)[0]
        for step in (0, 2, 4):
            for prefix in ("AD", "AD_error"):
                image = Image.open(result_dir / f"{prefix}_{step}_{stem}.png")
                assert image.size == (28, 28) and image.mode == "L"
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert set(metrics) >= {"n", "n_anomalous", "roc_auc", "pr_auc", "threshold",
                            "threshold_source", "f1", "seconds", "images_per_second",
                            "test_epoch", "ano_lambda"}
    assert metrics["n"] == 9 and metrics["test_epoch"] == 4 and metrics["ano_lambda"] == 0.1
    labels = [int(r["label"]) for r in rows]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert metrics["threshold_source"] == "heldout_train_images"
    kept = json.loads((root / "checkpoint" / "rings_8_28_28" / "thresholds.json").read_text())
    assert [entry["threshold"] for entry in kept["thresholds"]] == [metrics["threshold"]]
    assert kept["thresholds"][0]["key"]["test_epoch"] == 4
    assert metrics["threshold"] > 0
    assert {"precision", "recall", "f1", "oracle_best_f1"} <= set(metrics)
    assert metrics["oracle_best_f1"] >= metrics["f1"]
    flagged = [r["is_anomaly"] == "1" for r in rows]
    assert flagged == [float(r["anomaly_score"]) > metrics["threshold"] for r in rows]
    assert metrics["n_anomalous"] == sum(flagged)
    for name in ("roc.png", "scores_hist.png", "overview.png", "tsne.png"):
        assert Image.open(result_dir / name).size[0] > 100
    assert not (result_dir / ".scores.partial.csv").exists()
    assert_tensorboard_results(root / "logs" / "rings_8_28_28", "test_result", metrics)


def assert_tensorboard_results(log_dir, name, metrics):
    """TensorBoard's own reader finds the test's PR curve, histograms, overview and metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    prefix = f"test/{name}"
    assert set(events.PluginTagToContent("pr_curves")) == {f"{prefix}/pr_curves"}
    assert set(events.PluginTagToContent("histograms")) == {f"{prefix}/scores_normal",
                                                          f"{prefix}/scores_anomalous"}
    assert f"{prefix}/overview" in events.PluginTagToContent("images")
    (roc,) = events.Tensors(f"{prefix}/roc_auc")
    assert roc.step == 4 and float(tf.make_ndarray(roc.tensor_proto)) == pytest.approx(
        metrics["roc_auc"])
    (curve,) = events.Tensors(f"{prefix}/pr_curves")
    precision_recall = tf.make_ndarray(curve.tensor_proto)  # rows: TP, FP, TN, FN, P, R
    assert precision_recall.shape == (6, 201) and precision_recall[0, 0] == 4  # all 4 anomalies


def test_scores_do_not_depend_on_the_test_batch_size(trained):
    root, flags = trained
    test_dir = labelled_test_dir(root)
    assert anomaly_test(flags, test_dir, "--test_result_dir", "b4") == 0
    assert anomaly_test(flags, test_dir, "--test_batch_size", 3, "--test_result_dir", "b3") == 0
    b4, b3 = (np.array([float(r["anomaly_score"]) for r in read_scores(test_dir / name)])
              for name in ("b4", "b3"))
    np.testing.assert_allclose(b3, b4, rtol=1e-4)


def test_manual_threshold_and_gan_discrimination(trained):
    root, flags = trained
    test_dir = labelled_test_dir(root)
    assert anomaly_test(flags, test_dir, "--threshold", "1e9", "--dis_loss", "gan",
                        "--test_result_dir", "gan") == 0
    result_dir = test_dir / "gan"
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["threshold_source"] == "manual" and metrics["threshold"] == 1e9
    assert metrics["n_anomalous"] == 0 and metrics["f1"] == 0.0
    rows = read_scores(result_dir)
    assert all(r["is_anomaly"] == "0" for r in rows)
    for row in rows:  # D's GAN loss on G(z): a softplus of a logit, positive and small.
        assert 0.0 < float(row["discrimination_loss"]) < 50.0
    assert anomaly_test(flags, test_dir, "--threshold", "-1", "--test_result_dir", "low") == 0
    assert json.loads((test_dir / "low" / "metrics.json").read_text())["n_anomalous"] == 9


def test_unlabelled_images_give_null_aucs_and_heldout_threshold(trained, capsys):
    root, flags = trained
    test_dir = root / "unlabelled"
    write_images(test_dir, 3, 28, kind=2, seed=9)
    assert anomaly_test(flags, test_dir, figures=True) == 0
    assert "held-out training images" in capsys.readouterr().out
    result_dir = test_dir / "test_result"
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["roc_auc"] is None and metrics["pr_auc"] is None and metrics["f1"] is None
    assert metrics["threshold_source"] == "heldout_train_images"
    assert [r["label"] for r in read_scores(result_dir)] == ["", "", ""]
    assert not (result_dir / "roc.png").exists() and not (result_dir / "tsne.png").exists()
    assert (result_dir / "overview.png").exists() and (result_dir / "scores_hist.png").exists()


def trained_model_and_images(root):
    """The fixture's DCGAN restored, and the labelled test images."""
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8),
                        root / "checkpoint" / "rings_8_28_28")
    assert dcgan.load()
    test_dir = labelled_test_dir(root)
    source = inputs.test_folder_source(test_dir, test_dir / "test_result", 1)
    return dcgan, np.stack([utils.load_image(f, (28, 28), (28, 28), False, 1)
                            for f in source.files])


def test_batch_search_equals_single_image_search(trained):
    dcgan, images = trained_model_and_images(trained[0])
    z0 = np.random.default_rng(1).uniform(-1, 1, (len(images), 16)).astype(np.float32)
    labels = np.zeros((len(images), 0), np.float32)
    search = SearchConfig(steps=10)
    batch = dcgan.search(images, labels, z0, search)
    for i in range(len(images)):
        single = dcgan.search(images[i:i + 1], labels[i:i + 1], z0[i:i + 1], search)
        np.testing.assert_allclose(single.score, batch.score[i:i + 1], rtol=1e-4)
        np.testing.assert_allclose(single.z, batch.z[i:i + 1], atol=2e-3)
        np.testing.assert_allclose(single.snapshots[10], batch.snapshots[10][i:i + 1],
                                   atol=1e-4)
    # The search never ends worse than its start, and a fresh z gives the same result again.
    start = dcgan.search(images, labels, z0, SearchConfig(steps=0))
    fast = dcgan.search(images, labels, z0, SearchConfig(steps=10, learning_rate=0.05))
    assert (fast.score <= start.score * (1 + 1e-5)).all() and fast.score.sum() < start.score.sum()
    again = dcgan.search(images, labels, z0, search)
    np.testing.assert_allclose(again.score, batch.score, rtol=1e-5)


def test_restarts_keep_each_images_best_start_and_clipping_bounds_z(trained):
    dcgan, images = trained_model_and_images(trained[0])
    labels = np.zeros((len(images), 0), np.float32)
    z0 = starting_z(range(len(images)), 16, seed=3, restarts=3)
    assert z0.shape == (3, len(images), 16)
    np.testing.assert_array_equal(z0[0], starting_z(range(len(images)), 16, seed=3))
    assert not np.allclose(z0[1], z0[2])
    fast = {"steps": 6, "learning_rate": 0.2}
    best = dcgan.search(images, labels, z0, SearchConfig(**fast, restarts=3))
    each = [dcgan.search(images, labels, z, SearchConfig(**fast)) for z in z0]
    scores = np.stack([r.score for r in each])
    np.testing.assert_allclose(best.score, scores.min(axis=0), rtol=1e-4)
    winner = scores.argmin(axis=0)
    for i, k in enumerate(winner):
        np.testing.assert_allclose(best.z[i], each[k].z[i], atol=2e-3)
        np.testing.assert_allclose(best.snapshots[6][i], each[k].snapshots[6][i], atol=1e-4)
    assert np.abs(np.concatenate([r.z for r in each])).max() > 1.0
    clipped = dcgan.search(images, labels, z0[0], SearchConfig(**fast, clip_z=True))
    assert np.abs(clipped.z).max() <= 1.0


def test_restarts_flags_reach_the_search_and_metrics(trained):
    root, flags = trained
    test_dir = labelled_test_dir(root)
    assert anomaly_test(flags, test_dir, "--test_restarts", 2, "--test_clip_z",
                        "--test_learning_rate", 0.05, "--test_result_dir", "restarts") == 0
    metrics = json.loads((test_dir / "restarts" / "metrics.json").read_text())
    assert metrics["test_restarts"] == 2 and metrics["test_clip_z"] is True
    assert metrics["test_learning_rate"] == 0.05 and len(read_scores(test_dir / "restarts")) == 9
    assert anomaly_test(flags, test_dir, "--test_restarts", 0) == 2


def test_best_of_keeps_each_images_lowest_score():
    def result(scores):
        scores = np.asarray(scores, np.float32)
        return SearchResult(scores, scores * 2, scores * 3, scores[:, None] * np.ones((1, 2)),
                                  {0: scores[:, None, None, None] * np.ones((1, 2, 2, 1))})

    best = SearchResult.best_of([result([3, 1, 5]), result([2, 4, 0])])
    np.testing.assert_array_equal(best.score, [2, 1, 0])
    np.testing.assert_array_equal(best.residual, [4, 2, 0])
    np.testing.assert_array_equal(best.z[:, 0], [2, 1, 0])
    np.testing.assert_array_equal(best.snapshots[0][:, 0, 0, 0], [2, 1, 0])


def test_one_class_conditional_model_searches_under_its_normal_digits_only(tmp_path):
    config = ModelConfig(28, 28, 1, z_dim=8, y_dim=10, gf_dim=8, df_dim=8, dfc_dim=32,
                               classes=(1, 7))
    dcgan = model.DCGAN(config, tmp_path)
    images = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    z0 = starting_z(range(4), 8)
    search = SearchConfig(steps=2)

    def under(digit):
        return dcgan.search(images, utils.one_hot([digit] * 4, 10), z0, search).score

    unlabelled = dcgan.search(images, np.zeros((4, 0), np.float32), z0, search).score
    np.testing.assert_allclose(unlabelled, np.minimum(under(1), under(7)), rtol=1e-6)
    assert not np.allclose(unlabelled, under(0))


def test_mnist_one_class_scoring_is_not_told_the_digit(tmp_path):
    write_mnist(tmp_path / "data" / "mnist", train_per_digit=10, test_per_digit=3)
    test_split = inputs.mnist_test_source(tmp_path / "data" / "mnist", (0,))
    assert test_split.classes is None  # a one-class model is not told the test image's digit
    assert test_split.labels.tolist().count(0) == 3
    assert set(inputs.mnist_test_source(tmp_path / "data" / "mnist").classes) == set(range(10))
    common = ["--dataset", "mnist", "--input_height", "28", "--output_height", "28",
              "--batch_size", "8", "--z_dim", "8", *TINY, "--data_dir", str(tmp_path / "data"),
              "--checkpoint_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs"),
              "--sample_dir", str(tmp_path / "samples"), "--test_dir", str(tmp_path / "test"),
              "--test_epoch", "2", "--test_batch_size", "8", "--epoch", "1", "--no_figures"]
    # One-class: normal digit 0, the MNIST test split (30 images) capped at 10, stratified.
    assert main.main([*common, "--normal_class", "0", "--train", "--anomaly_test",
                      "--test_size", "10"]) == 0
    rows = read_scores(tmp_path / "test" / "test_result")
    assert len(rows) == 10 and [r["label"] for r in rows].count("0") == 1
    assert json.loads((tmp_path / "test" / "test_result" / "metrics.json").read_text())[
        "roc_auc"] is not None
