"""The training health check, --retries and f-AnoGAN's WGAN-GP, on tiny models trained for real."""

import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import pattern_image, write_images
from PIL import Image

import health
import main
import model
import ops
from config import ModelConfig
from losses import critic_loss, gradient_penalty, wasserstein_generator_loss
from runtime import CheckpointError


def test_gradient_penalty_of_a_linear_critic_is_its_slope_minus_one_squared():
    # critic(x) = sum(w * x): its gradient is w everywhere, so the penalty is (||w|| - 1)^2.
    real = tf.zeros((3, 2, 2, 1))
    fake = tf.ones((3, 2, 2, 1))
    alpha = tf.constant([0.0, 0.5, 1.0])[:, None, None, None]
    for weight, expected in ((0.5, 0.0), (1.0, 1.0), (2.0, 9.0)):
        def critic(x, w=weight):
            return tf.reduce_sum(w * x, axis=[1, 2, 3])[:, None]

        penalty = gradient_penalty(critic, real, fake, alpha).numpy()
        np.testing.assert_allclose(penalty, [expected] * 3, atol=1e-5)


def test_gradient_penalty_of_a_quadratic_critic_depends_on_the_interpolate():
    # critic(x) = sum(x^2) / 2 has gradient x: at x_hat = alpha * fake the slope is 2 * alpha.
    real, fake = tf.zeros((2, 1, 1, 4)), tf.ones((2, 1, 1, 4))
    alpha = tf.constant([0.25, 1.0])[:, None, None, None]
    penalty = gradient_penalty(lambda x: tf.reduce_sum(x * x, [1, 2, 3])[:, None] / 2,
                                     real, fake, alpha)
    np.testing.assert_allclose(penalty.numpy(), [(0.5 - 1) ** 2, (2.0 - 1) ** 2], atol=1e-5)


def test_wasserstein_losses():
    real, fake = tf.constant([[2.0], [1.0]]), tf.constant([[0.5], [3.0]])
    np.testing.assert_allclose(critic_loss(real, fake).numpy(), [-1.5, 2.0])
    np.testing.assert_allclose(wasserstein_generator_loss(fake).numpy(), [-0.5, -3.0])


def test_measures_tell_collapse_and_noise_from_real_images():
    rng = np.random.default_rng(0)
    reals = np.stack([pattern_image(int(k), 16, rng) for k in rng.integers(1, 10, 60)])
    reals = reals[..., None] / 255.0  # bars at nine angles, with pixel noise
    queries, references = reals[:20], reals[20:]
    assert health.diversity(queries, references) == pytest.approx(1.0, abs=0.15)
    collapsed = np.repeat(queries[:1], 20, axis=0)
    assert health.diversity(collapsed, queries) == pytest.approx(0.0, abs=1e-6)
    white = np.ones((20, 16, 16, 1))  # far from every real image
    assert health.fidelity(white, queries, references) > 2.0
    assert health.fidelity(references[:20], queries, references) == pytest.approx(0.0, abs=1e-6)
    result = health.verdict({"diversity": 0.1, "fidelity": 2.0})
    assert not result["passed"] and len(result["failures"]) == 2
    assert result["failures"][0].startswith("diversity 0.1 < 0.7")
    line = health.warning_line(result)
    assert line.startswith("warning: training health check failed: diversity 0.1 < 0.7")
    assert "--seed" in line and "--min_steps" in line and "--gan wgan_gp" in line
    assert "\n" not in line
    assert "--gan wgan_gp" not in health.warning_line(result, gan="wgan_gp")
    assert health.verdict({"diversity": 0.9, "fidelity": 1.1})["passed"]
    assert health.warning_line(health.verdict({"diversity": 0.9})) is None


def test_encoder_measures_compare_with_the_mean_image_and_the_search():
    held = np.linspace(0, 1, 4 * 16).reshape(4, 4, 4, 1)
    measures = health.encoder_measures(held, held + 0.01, held + 0.1, held)
    assert measures["encoder_residual"] == pytest.approx(0.01)
    assert measures["encoder_vs_search"] == pytest.approx(0.1, abs=1e-3)
    assert measures["encoder_vs_mean"] < 0.1
    assert health.verdict(measures)["passed"]
    assert not health.verdict({**measures, "encoder_vs_search": 2.5})["passed"]


def test_the_encoder_warning_blames_g_when_the_search_fails_too():
    held = np.linspace(0, 1, 4 * 16).reshape(4, 4, 4, 1)
    references = np.concatenate([held, 1 - held])  # mean image 0.5 everywhere
    unconverged = health.verdict(health.encoder_measures(held, 1 - held, held + 0.01, references))
    line = health.warning_line(unconverged, "encoder")
    assert "encoder_vs_mean" in line and line.endswith(
        "train the encoder longer (--encoder_min_steps, --encoder_max_steps)")
    searched_badly = 0.5 + (held - 0.5) * 0.1  # near the mean image too
    weak_g = health.verdict(health.encoder_measures(held, searched_badly, searched_badly,
                                                    references))
    assert health.search_vs_mean(weak_g) == pytest.approx(0.9, abs=1e-3)
    line = health.warning_line(weak_g, "encoder")
    assert "a short search reaches 0.90 of the mean image's residual" in line
    assert "train the GAN longer" in line and "\n" not in line


@pytest.fixture(scope="module")
def wgan(tmp_path_factory):
    """A tiny WGAN-GP trained 2 epochs with one retry (its G fails the check: too few
    steps); the flags and what the training printed."""
    root = tmp_path_factory.mktemp("wgan")
    write_images(root / "data" / "rings", 40, 28, kind=0)
    write_images(root / "test" / "normal", 4, 28, kind=0, seed=7)
    write_images(root / "test" / "anomaly", 4, 28, kind=4, seed=8)
    flags = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--batch_size", "8",
             "--input_height", "28", "--output_height", "28", "--z_dim", "16",
             "--gf_dim", "8", "--df_dim", "8", "--data_dir", str(root / "data"),
             "--checkpoint_dir", str(root / "checkpoint"), "--sample_dir", str(root / "samples"),
             "--log_dir", str(root / "logs"), "--gan", "wgan_gp", "--n_critic", "2",
             "--test_dir", str(root / "test"), "--no_figures"]
    return root, flags


def test_wgan_gp_retries_with_the_next_seed_resumes_and_scores(wgan, capsys):
    root, flags = wgan
    folder = root / "checkpoint" / "rings_8_28_28_wgan_gp"
    assert main.main([*flags, "--epoch", "2", "--retries", "1", "--train"]) == 0
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("training health check failed" in w for w in warnings)
    assert "--seed" in warnings[0] and "--gan wgan_gp" not in warnings[0]
    assert "failed its health check" in out.out and "training again with seed 1" in out.out
    config = json.loads((folder / "config.json").read_text())
    assert config["gan"] == "wgan_gp" and config["training_seed"] == 1
    assert config["health"]["gan"]["passed"] is False
    assert {"diversity", "fidelity"} <= set(config["health"]["gan"])
    rejected = folder / "rejected_seed0"
    assert (rejected / "config.json").exists() and list(rejected.glob("ckpt-*.index"))
    assert json.loads((rejected / "config.json").read_text())["training_seed"] == 0
    assert "epoch 2/2 done" in out.out and "diversity" in out.out
    assert main.main([*flags, "--epoch", "3", "--retries", "1", "--train", "--train_encoder",
                      "--encoder_min_steps", "6", "--encoder_patience", "0", "--anomaly_test", "--z_init", "encoder",
                      "--test_epoch", "0"]) == 0
    out = capsys.readouterr()
    assert "resuming from step 8" in out.out and "seed 1" in out.out
    assert "training again" not in out.out
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8,
                                          gan="wgan_gp"), folder)
    assert dcgan.load() and dcgan.steps_done == 12 and dcgan.training_seed == 1
    assert isinstance(dcgan.discriminator.bns[1], ops.LayerNorm)
    assert "encoder health:" in out.out and "3 epochs of 4 steps" in out.out
    metrics = json.loads((root / "test" / "test_result" / "metrics.json").read_text())
    assert metrics["gan"] == "wgan_gp" and metrics["n"] == 8 and metrics["training_seed"] == 1
    assert metrics["health"]["gan"]["passed"] is False
    assert "encoder_vs_mean" in metrics["health"]["encoder"]
    # Once at the training's end, once more from --anomaly_test.
    assert out.err.count("warning: training health check failed") == 2


def test_a_checkpoint_of_another_gan_is_refused(wgan):
    root, _ = wgan
    folder = root / "checkpoint" / "rings_8_28_28_wgan_gp"
    dcgan = model.DCGAN(ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8), folder)
    with pytest.raises(CheckpointError, match="gan: checkpoint wgan_gp vs now dcgan"):
        dcgan.load()


def test_the_check_passes_a_generator_that_draws_the_training_distribution(tmp_path):
    config = ModelConfig(28, 28, 1, z_dim=16, gf_dim=8, df_dim=8)
    dcgan = model.DCGAN(config, tmp_path / "ckpt")
    z = np.random.default_rng(1).uniform(-1, 1, (700, 16)).astype(np.float32)
    drawn = dcgan.generate(z)  # "training images" this G draws itself, from other z
    labels = np.zeros((8, 0), np.float32)
    result = health.check_gan(dcgan, health.RealImages(drawn[:256], drawn[256:], drawn[:8],
                                                       labels, config.value_range))
    assert result["passed"], result
    assert result["diversity"] == pytest.approx(1.0, abs=0.15)
    assert result["fidelity"] == pytest.approx(1.0, abs=0.15)
    paths = write_images(tmp_path / "rings", 40, 28, kind=0)
    rings = np.stack([np.asarray(Image.open(p), np.float32)[..., None] / 127.5 - 1 for p in paths])
    result = health.check_gan(dcgan, health.RealImages(rings[:20], rings[20:], rings[:8],
                                                       labels, config.value_range))
    assert not result["passed"] and result["fidelity"] > 1.5  # an untrained G draws no rings
