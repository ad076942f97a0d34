"""Whole-model checkpoints and f-AnoGAN's izi_f encoder, on tiny models trained for real."""

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import error_line, write_images, write_mnist
from PIL import Image

import inputs
import main
import model
import ops
import utils
from config import ModelConfig, SearchConfig, TrainConfig
from losses import anomaly_score, izif_score
from samples import sample_inputs
from search import starting_z

REPO = Path(__file__).resolve().parents[1]
CONFIG = ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8)


def run_main(flags, *extra):
    return main.main([*flags, *map(str, extra)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GAN trained 3 epochs on 28x28 rings, then its encoder 4 epochs; the flags. A copy of
    the checkpoints before the encoder's training is kept in ``gan_only/``.

    Learning rates 10x (40x for E) the defaults let 12 steps make a G whose output follows z
    and 16 steps show E learning.
    """
    root = tmp_path_factory.mktemp("encoder")
    write_images(root / "data" / "rings", 40, 28, kind=0)
    flags = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--batch_size", "8",
             "--input_height", "28", "--output_height", "28", "--z_dim", "16",
             "--gf_dim", "8", "--df_dim", "8", "--retries", "0", "--encoder_min_steps", "0", "--encoder_patience", "0",
             "--data_dir", str(root / "data"),
             "--checkpoint_dir", str(root / "checkpoint"), "--sample_dir", str(root / "samples"),
             "--log_dir", str(root / "logs"), "--epoch", "3", "--learning_rate", "0.002",
             "--encoder_learning_rate", "0.002", "--no_figures"]
    assert run_main(flags, "--train") == 0
    shutil.copytree(root / "checkpoint", root / "gan_only")
    assert run_main(flags, "--train_encoder", "--encoder_epoch", "4") == 0
    return root, flags


def restored(root):
    dcgan = model.DCGAN(CONFIG, root / "checkpoint" / "rings_8_28_28")
    assert dcgan.load()
    return dcgan


def labelled_test_dir(root):
    test_dir = root / "labelled"
    if not test_dir.exists():
        write_images(test_dir / "normal", 5, 28, kind=0, seed=7)
        write_images(test_dir / "anomaly", 4, 28, kind=4, seed=8)
    return test_dir


def test_round_trip_in_a_fresh_process_computes_exactly_the_same(tmp_path):
    source_dir = tmp_path / "data"
    write_images(source_dir, 16, 28, kind=0)
    source = inputs.folder_source(source_dir, "*.png")
    dcgan = model.DCGAN(CONFIG, tmp_path / "ckpt", TrainConfig(
        epochs=2, sample_dir=str(tmp_path / "s"), log_dir=str(tmp_path / "l")))
    dataset = inputs.make_dataset(source, inputs.ImageSpec((28, 28), (28, 28)), 8, shuffle_seed=0,
                                  drop_remainder=True)
    dcgan.train(dataset, 2, 8, sample_inputs(CONFIG, 8))
    variance = dcgan.generator.bns[0].moving_variance.numpy()
    assert not np.allclose(variance, 1.0)  # training moved the statistics away from the start
    z = np.random.default_rng(0).uniform(-1, 1, (4, 16)).astype(np.float32)
    images = dcgan.generate(z)
    _, features = dcgan.discriminator(images, training=False)
    np.savez(tmp_path / "before.npz", z=z, images=images, features=features.numpy())
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        import model
        from config import ModelConfig
        dcgan = model.DCGAN({CONFIG!r}, {str(tmp_path / "ckpt")!r})
        assert dcgan.load() and not dcgan.warnings
        before = np.load({str(tmp_path / "before.npz")!r})
        images = dcgan.generate(before["z"])
        _, features = dcgan.discriminator(images, training=False)
        np.testing.assert_array_equal(images, before["images"])
        np.testing.assert_array_equal(features.numpy(), before["features"])
        print("identical")
        """)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "identical" in result.stdout, result.stderr[-3000:]
    names = [name for name, _ in tf.train.list_variables(dcgan.checkpoints.latest)]
    assert any("moving_variance" in name for name in names)


def write_legacy_checkpoint(dcgan):
    """A checkpoint as the earlier version wrote it: Keras models handed to tf.train.Checkpoint
    directly, so that only the optimisers' references reach their weights."""
    legacy = tf.train.Checkpoint(generator=dcgan.generator, discriminator=dcgan.discriminator,
                                 d_optim=dcgan.d_optim, g_optim=dcgan.g_optim, step=dcgan.step)
    return tf.train.CheckpointManager(legacy, str(dcgan.checkpoint_dir), 3).save(
        checkpoint_number=dcgan.steps_done)


def test_a_checkpoint_of_an_early_version_is_refused_in_one_line(workdir, capsys):
    write_images(workdir / "data" / "rings", 24, 28, kind=0)
    flags = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--batch_size", "8",
             "--input_height", "28", "--output_height", "28", "--z_dim", "16",
             "--gf_dim", "8", "--df_dim", "8", "--retries", "0", "--encoder_min_steps", "0", "--encoder_patience", "0"]
    assert run_main(flags, "--epoch", "1", "--train") == 0
    folder = workdir / "checkpoint" / "rings_8_28_28"
    trained = restored(workdir)
    for path in folder.glob("ckpt-*"):
        path.unlink()
    legacy = write_legacy_checkpoint(trained)
    before = {path.name: path.read_bytes() for path in folder.glob("ckpt-*")}

    write_images(workdir / "test_data" / "normal", 2, 28, kind=0, seed=3)
    capsys.readouterr()
    assert run_main(flags, "--anomaly_test", "--test_epoch", "1") == 2
    line = error_line(capsys)
    assert f"cannot restore {Path(legacy).relative_to(workdir)}" in line
    assert "early version" in line
    assert "train again" in line
    assert {path.name: path.read_bytes() for path in folder.glob("ckpt-*")} == before
    assert not (workdir / "test_data" / "test_result").exists()


def test_encoder_trains_its_loss_falls_and_it_writes_grids_and_logs(trained):
    root, _ = trained
    dcgan = restored(root)
    assert dcgan.encoder_ready and dcgan.encoder_steps_done == 16
    config = json.loads((root / "checkpoint" / "rings_8_28_28" / "config.json").read_text())
    assert config["encoder"] == {"steps": 16, "trained_for_step": 12, "kappa": 1.0,
                                 "stop": None}
    grids = sorted(p.name for p in (root / "samples").glob("encoder_*.png"))
    assert grids == ["encoder_03_0004.png"]  # reports are paced by 100 steps, and the end
    # x beside G(E(x)): pairs of tiles, 4 pairs a row.
    assert Image.open(root / "samples" / grids[-1]).size == (8 * 28, 1 * 28)
    events = [event for path in (root / "logs").rglob("events.out.tfevents.*")
              for event in tf.compat.v1.train.summary_iterator(str(path))]
    losses = [tf.make_ndarray(value.tensor).item() for event in events
              for value in event.summary.value if value.tag == "encoder_loss"]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.97 * np.mean(losses[:4]) and losses[-1] < losses[0]
    assert any(value.tag == "reconstructions" for event in events
               for value in event.summary.value)


def test_encoder_resumes_and_is_saved_and_restored(trained, capsys):
    root, flags = trained
    dcgan = restored(root)
    images = np.stack([utils.load_image(p, (28, 28), (28, 28), False, 1)
                       for p in sorted((root / "data" / "rings").glob("*.png"))[:5]])
    labels = np.zeros((5, 0), np.float32)
    z = dcgan.encode(images, labels).numpy()
    assert np.abs(z).max() <= 1.0
    again = restored(root)
    np.testing.assert_array_equal(again.encode(images, labels).numpy(), z)
    capsys.readouterr()
    assert run_main(flags, "--train_encoder", "--encoder_epoch", "4") == 0
    assert "encoder already trained 16 steps" in capsys.readouterr().out
    untrained = model.DCGAN(CONFIG, root / "elsewhere")
    assert not np.allclose(untrained.encode(images, labels).numpy(), z)


def read_scores(result_dir):
    with open(result_dir / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_encoder_scoring_without_search_writes_every_output(trained):
    root, flags = trained
    test_dir = labelled_test_dir(root)
    assert run_main(flags, "--anomaly_test", "--test_dir", test_dir, "--z_init", "encoder",
                    "--test_epoch", 0, "--test_batch_size", 4, "--test_result_dir", "enc") == 0
    result_dir = test_dir / "enc"
    rows = read_scores(result_dir)
    assert len(rows) == 9
    for row in rows:
        stem = row["file"].replace("/", "_").rsplit(".", 1)[0]
        for prefix in ("AD", "AD_error"):
            assert Image.open(result_dir / f"{prefix}_0_{stem}.png").size == (28, 28)
    assert not list(result_dir.glob("AD_1_*"))
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["z_init"] == "encoder" and metrics["test_epoch"] == 0
    assert metrics["encoder_steps"] == 16 and metrics["roc_auc"] is not None
    for name in ("roc.png", "scores_hist.png", "overview.png", "tsne.png"):
        assert not (result_dir / name).exists()  # --no_figures (drawn in test_anomaly.py)


def test_zero_step_score_is_the_score_function_of_g_of_e_of_x(trained):
    root, _ = trained
    dcgan = restored(root)
    test_dir = labelled_test_dir(root)
    files = sorted(str(p) for p in test_dir.rglob("img_*.png") if "enc" not in p.parts)
    images = np.stack([utils.load_image(f, (28, 28), (28, 28), False, 1) for f in files])
    labels = np.zeros((len(images), 0), np.float32)
    z0 = starting_z(range(len(images)), 16)
    for config in (SearchConfig(steps=0, z_init="encoder"),
                   SearchConfig(steps=0, z_init="encoder", score="izif", kappa=0.5)):
        result = dcgan.search(images, labels, z0, config)
        z = dcgan.encode(images, labels)
        fakes = dcgan.generator(z, labels, training=False)
        _, real_features = dcgan.discriminator(images, labels, training=False)
        logits, fake_features = dcgan.discriminator(fakes, labels, training=False)
        expected = config.scores(images, fakes, real_features, fake_features, logits)
        for got, want in zip((result.score, result.residual, result.discrimination), expected):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
        np.testing.assert_allclose(result.z, z.numpy(), atol=1e-6)
        np.testing.assert_allclose(result.snapshots[0], fakes.numpy(), atol=1e-5)
    residual = np.abs(images - fakes.numpy()).reshape(len(images), -1)
    np.testing.assert_allclose(
        anomaly_score(images, fakes, real_features, fake_features, 0.1)[1], residual.sum(1),
        rtol=1e-5)
    np.testing.assert_allclose(
        izif_score(images, fakes, real_features, fake_features, 1.0)[1],
        (residual ** 2).mean(1), rtol=1e-5)


def test_encoder_start_search_does_not_depend_on_the_batch_size(trained):
    root, flags = trained
    test_dir = labelled_test_dir(root)
    for batch in (4, 3):
        assert run_main(flags, "--anomaly_test", "--test_dir", test_dir, "--z_init", "encoder",
                        "--test_epoch", 3, "--test_learning_rate", 0.05, "--test_restarts", 2,
                        "--test_batch_size", batch, "--test_result_dir", f"enc_b{batch}") == 0
    b4, b3 = ([float(r["anomaly_score"]) for r in read_scores(test_dir / f"enc_b{batch}")]
              for batch in (4, 3))
    np.testing.assert_allclose(b3, b4, rtol=1e-4)


def test_encoder_error_cases_are_one_line(trained, tmp_path, capsys):
    root, flags = trained
    elsewhere = [*flags, "--checkpoint_dir", str(tmp_path / "none")]
    assert run_main(elsewhere, "--train_encoder") == 2
    assert "no trained GAN in" in error_line(capsys)
    assert run_main(flags, "--train_encoder", "--encoder_epoch", 0) == 2
    assert "--encoder_epoch must be positive" in error_line(capsys)
    assert run_main(flags, "--anomaly_test", "--score", "izif", "--dis_loss", "gan") == 2
    assert "--score izif compares D's features" in error_line(capsys)
    assert run_main(flags, "--anomaly_test", "--test_epoch", -1) == 2
    assert "--test_epoch must be >= 0" in error_line(capsys)

    # A GAN without an encoder, then one whose G moved on after its encoder was trained.
    test_dir = labelled_test_dir(root)
    gan_only = [*flags, "--checkpoint_dir", str(root / "gan_only")]
    capsys.readouterr()
    assert run_main(gan_only, "--anomaly_test", "--test_dir", test_dir, "--z_init",
                    "encoder") == 2
    assert "no trained encoder in" in error_line(capsys)
    copy = tmp_path / "copy"
    shutil.copytree(root / "checkpoint", copy)
    fresh = [*flags, "--checkpoint_dir", str(copy)]
    assert run_main(fresh, "--train", "--epoch", 4) == 0
    capsys.readouterr()
    assert run_main(fresh, "--anomaly_test", "--test_dir", test_dir, "--z_init", "encoder") == 2
    assert "was trained for G at step 12, G is now at step 16" in error_line(capsys)
    assert run_main(fresh, "--train_encoder", "--encoder_epoch", 1, "--epoch", 4,
                    "--anomaly_test", "--test_dir", test_dir, "--z_init", "encoder",
                    "--test_epoch", 0, "--test_result_dir", "again") == 0
    assert "training it again" in capsys.readouterr().out


def test_search_config_checks_its_own_fields():
    with pytest.raises(ValueError, match="--dis_loss must be one of"):
        SearchConfig(dis_loss="gan_loss")
    with pytest.raises(ValueError, match="--z_init must be one of"):
        SearchConfig(z_init="zeros")
    with pytest.raises(ValueError, match="--ano_lambda"):
        SearchConfig(ano_lambda=2.0)
    with pytest.raises(ValueError, match=r"--residual_shift must be in \[0, 8\] pixels"):
        SearchConfig(residual_shift=9)
    with pytest.raises(ValueError, match="--encoder_epoch"):
        TrainConfig(encoder_epochs=0)
    with pytest.raises(ValueError, match="--output_height"):
        ModelConfig(4, 4, 1)


def test_conditional_features_are_the_fully_connected_layer(tmp_path):
    config = ModelConfig(28, 28, 1, z_dim=8, y_dim=10, gf_dim=8, df_dim=8, dfc_dim=32)
    dcgan = model.DCGAN(config, tmp_path)
    labels = utils.one_hot([0, 3], 10)
    images = dcgan.generate(np.zeros((2, 8), np.float32), labels)
    logits, features = dcgan.discriminator(images, labels, training=False)
    assert logits.shape == (2, 1) and features.shape == (2, 32)
    d = dcgan.discriminator
    h = ops.lrelu(d.bn1(d.conv1(ops.conv_cond_concat(
        ops.lrelu(d.conv0(ops.conv_cond_concat(images, labels))), labels)), training=False))
    expected = ops.lrelu(d.bn2(d.fc2(tf.concat([ops.flat(h), labels], 1)), training=False))
    np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)
    assert dcgan.encode(images, labels).shape == (2, 8)


def test_conditional_mnist_encoder_scores_with_and_without_labels(tmp_path):
    write_mnist(tmp_path / "data" / "mnist", train_per_digit=8, test_per_digit=2)
    flags = ["--dataset", "mnist", "--batch_size", "8", "--z_dim", "8", "--gf_dim", "8",
             "--df_dim", "8", "--retries", "0", "--encoder_min_steps", "0", "--encoder_patience", "0",
             "--data_dir", str(tmp_path / "data"),
             "--checkpoint_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs"),
             "--sample_dir", str(tmp_path / "samples"), "--test_dir", str(tmp_path / "test"),
             "--epoch", "1", "--encoder_epoch", "1", "--test_batch_size", "8", "--no_figures"]
    # The test split's digits are known: the search from E(x) runs under each image's label.
    assert run_main(flags, "--train", "--train_encoder", "--anomaly_test", "--z_init", "encoder",
                    "--test_epoch", 1, "--test_size", 6) == 0
    assert len(read_scores(tmp_path / "test" / "test_result")) == 6
    folder = tmp_path / "ckpt" / "mnist_8_28_28"
    config = json.loads((folder / "config.json").read_text())
    assert (config["y_dim"], config["c_dim"], config["classes"]) == (10, 1, [])
    assert sorted(p.name for p in folder.glob("ckpt-*.index")) == ["ckpt-9.index"]  # 72 of 80
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=8, y_dim=10, gf_dim=8, df_dim=8), folder)
    assert dcgan.load()
    images = dcgan.generate(*sample_inputs(dcgan.config, 10))
    assert images.shape == (10, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
    write_images(tmp_path / "test" / "anomaly", 2, 28, kind=5)
    write_images(tmp_path / "test" / "normal", 6, 28, kind=0, seed=3)
    saved = tmp_path / "detector"
    assert run_main(flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", 0,
                    "--image_score", "top1", "--test_result_dir", "folder",
                    "--export", saved) == 0
    rows = read_scores(tmp_path / "test" / "folder")
    assert [r["label"] for r in rows] == ["1"] * 2 + ["0"] * 6  # from the folders' names
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    for row in rows:
        pixels = np.asarray(Image.open(tmp_path / "test" / row["file"]))[None, ..., None]
        exported = serve(images=tf.constant(pixels))["score"].numpy()[0]
        assert exported == pytest.approx(float(row["anomaly_score"]), rel=1e-5)
