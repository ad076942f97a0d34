"""DiffAugment of D's inputs: each transformation on images whose result can be worked out, the
gradient through it, the flag, and a tiny training with it."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_images

import main
import model
from augmentation import augment, color, cutout, shift_indices, square_mask, translation
from config import ModelConfig, TrainConfig


def dot_images(count, size=16, row=8, col=8):
    """``count`` images, all zero but one pixel of 1 at (row, col)."""
    images = np.zeros((count, size, size, 1), np.float32)
    images[:, row, col] = 1.0
    return tf.constant(images)


def test_shift_indices_move_content_and_mark_what_came_from_outside():
    source, inside = shift_indices(5, tf.constant([2, -1]))
    np.testing.assert_array_equal(source.numpy(), [[0, 0, 0, 1, 2], [1, 2, 3, 4, 4]])
    np.testing.assert_array_equal(inside.numpy(), [[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])


def test_translation_moves_each_image_by_at_most_an_eighth_and_keeps_the_pixel():
    tf.random.set_seed(0)
    shifted = translation(dot_images(200)).numpy()
    assert shifted.sum(axis=(1, 2, 3)) == pytest.approx(np.ones(200))  # 16/8: nothing lost
    rows, cols = np.nonzero(shifted[..., 0].sum(axis=2))[1], np.nonzero(
        shifted[..., 0].sum(axis=1))[1]
    assert set(rows - 8) == set(range(-2, 3)) and set(cols - 8) == set(range(-2, 3))


def test_translation_zero_fills_what_comes_in_from_the_border():
    tf.random.set_seed(1)
    shifted = translation(tf.ones((100, 16, 16, 1))).numpy()
    kept = shifted.sum(axis=(1, 2, 3))
    assert kept.min() >= 14 * 14 and kept.max() == 256 and set(np.unique(shifted)) == {0, 1}


def test_square_mask_and_cutout_zero_one_square_of_half_the_size():
    mask = square_mask(8, 8, tf.constant([4, 0]), tf.constant([4, 0]), 4, 4).numpy()[..., 0]
    assert (mask[0] == 0).sum() == 9 and mask[0, 3:6, 3:6].max() == 0  # |i - 4| * 2 < 4
    assert (mask[1] == 0).sum() == 4 and mask[1, :2, :2].max() == 0  # clipped at the corner
    tf.random.set_seed(2)
    cut = cutout(tf.ones((50, 16, 16, 1))).numpy()
    zeroed = (cut == 0).sum(axis=(1, 2, 3))
    assert zeroed.max() <= 64 and zeroed.min() >= 16 and (zeroed == 49).any()


def test_color_shifts_brightness_and_scales_contrast_about_the_mean():
    tf.random.set_seed(3)
    images = tf.constant(np.linspace(-1, 1, 4 * 64).reshape(4, 8, 8, 1), tf.float32)
    changed = color(images).numpy()
    spread = changed.std(axis=(1, 2, 3)) / images.numpy().std(axis=(1, 2, 3))
    shift = changed.mean(axis=(1, 2, 3)) - images.numpy().mean(axis=(1, 2, 3))
    assert np.all((spread >= 0.5) & (spread <= 1.5)) and np.all(np.abs(shift) <= 0.5)


def test_gradients_flow_through_every_policy_and_no_policy_is_the_identity():
    images = tf.Variable(tf.random.uniform((4, 16, 16, 1)))
    for policies in (("color", "translation", "cutout"), ("translation", "cutout")):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(augment(images, policies))
        gradient = tape.gradient(total, images).numpy()
        assert np.isfinite(gradient).all() and (gradient != 0).any()
    assert (gradient == 0).any()  # pixels cut out or shifted out of the image
    assert augment(images, ()) is images


def test_unknown_policies_are_refused():
    with pytest.raises(ValueError, match="--augment takes"):
        TrainConfig(augment=("rotation",))


def test_the_flag_checks_its_policies(capsys):
    with pytest.raises(SystemExit) as stop:
        main.main(["--augment", "translation,flip", "--train"])
    assert stop.value.code == 2
    assert "unknown policy 'flip'" in capsys.readouterr().err


def test_a_tiny_training_with_augmentation_trains_and_scores(tmp_path, capsys):
    write_images(tmp_path / "data" / "rings", 24, 16, kind=0)
    write_images(tmp_path / "test" / "normal", 4, 16, kind=0, seed=7)
    write_images(tmp_path / "test" / "anomaly", 4, 16, kind=4, seed=8)
    flags = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--batch_size", "8",
             "--input_height", "16", "--output_height", "16", "--z_dim", "8", "--gf_dim", "4",
             "--df_dim", "4", "--data_dir", str(tmp_path / "data"), "--retries", "0",
             "--checkpoint_dir", str(tmp_path / "ckpt"), "--sample_dir", str(tmp_path / "s"),
             "--log_dir", str(tmp_path / "logs"), "--test_dir", str(tmp_path / "test"),
             "--no_figures", "--augment", "translation,cutout", "--epoch", "2",
             "--encoder_min_steps", "4"]
    assert main.main([*flags, "--train", "--train_encoder", "--anomaly_test",
                      "--z_init", "encoder", "--test_epoch", "0"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2 done" in out and "roc_auc" in out
    assert (tmp_path / "test" / "test_result" / "metrics.json").exists()


def test_the_critic_sees_augmented_images_only_when_asked(tmp_path):
    config = ModelConfig(16, 16, 1, z_dim=8, gf_dim=4, df_dim=4)
    images = tf.ones((8, 16, 16, 1))
    plain = model.DCGAN(config, tmp_path / "a")
    augmented = model.DCGAN(config, tmp_path / "b", TrainConfig(augment=("cutout",)))
    augmented.discriminator.set_weights(plain.discriminator.get_weights())
    tf.random.set_seed(4)
    same = plain._critic(images, None).numpy()
    assert np.allclose(same, same[0])  # identical inputs, identical logits
    cut = augmented._critic(images, None).numpy()
    assert not np.allclose(cut, same) and np.ptp(cut) > 0  # a different square per image
