"""Patch mode on a tiny model trained for real: random patches of large images, test images
of other sizes tiled and stitched at their own resolution, the export's tiling, and the flags
and images it refuses."""

import json

import numpy as np
import pytest
from conftest import error_line, read_scores
from PIL import Image

import main

PATCH = ["--patch_size", "16", "--batch_size", "8", "--z_dim", "8", "--gf_dim", "8",
         "--df_dim", "8", "--retries", "0", "--no_figures", "--input_fname_pattern", "*.png"]
ONE_PASS = ["--z_init", "encoder", "--test_epoch", "0"]
HOLE = (slice(20, 28), slice(40, 50))


def stripes(height, width, rng):
    """A low-contrast striped texture, 8-bit gray."""
    xx = np.mgrid[0:height, 0:width][1]
    return np.clip(150 + 25 * np.sin(xx / 2.5) + rng.normal(0, 4, (height, width)), 0,
                   255).astype(np.uint8)


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory):
    """A tiny DCGAN and encoder trained on 16x16 patches of 22 striped 48x64 images; a test
    folder of 40x72 images, three with a dark hole and its mask; (root, flags)."""
    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(0)
    (root / "data" / "stripes").mkdir(parents=True)
    for index in range(22):
        Image.fromarray(stripes(48, 64, rng)).save(root / "data" / "stripes" / f"{index}.png")
    for folder in ("good", "hole"):
        (root / "test" / folder).mkdir(parents=True)
    (root / "ground_truth" / "hole").mkdir(parents=True)
    for index in range(3):
        Image.fromarray(stripes(40, 72, rng)).save(root / "test" / "good" / f"{index}.png")
        image, mask = stripes(40, 72, rng), np.zeros((40, 72), np.uint8)
        image[HOLE], mask[HOLE] = 10, 255
        Image.fromarray(image).save(root / "test" / "hole" / f"{index}.png")
        Image.fromarray(mask).save(root / "ground_truth" / "hole" / f"{index}_mask.png")
    flags = ["--dataset", "stripes", *PATCH, "--data_dir", str(root / "data"),
             "--checkpoint_dir", str(root / "checkpoint"), "--sample_dir",
             str(root / "samples"), "--log_dir", str(root / "logs"), "--test_dir",
             str(root / "test")]
    assert main.main([*flags, "--min_steps", "60", "--epoch", "1", "--encoder_min_steps",
                      "30", "--encoder_patience", "0", "--encoder_epoch", "1", "--learning_rate", "0.002",
                      "--encoder_learning_rate", "0.002", "--train", "--train_encoder"]) == 0
    return root, flags


def test_patch_training_counts_an_epoch_in_patches(patch_model):
    root, _ = patch_model
    folder = root / "checkpoint" / "stripes_8_16_16"
    saved = json.loads((folder / "config.json").read_text())
    assert saved["patch_size"] == 16 and saved["output_height"] == 16
    # 20 images of 48x64 (two held out) are 240 patches of 16x16: 30 steps an epoch, so
    # --min_steps 60 trains two epochs and the encoder's one epoch is 30 steps.
    assert (folder / "ckpt-60.index").exists()
    assert saved["encoder"]["steps"] == 30
    grids = {p.name for p in (root / "samples").glob("train_*_0030.png")}
    assert grids == {"train_01_0030.png"}  # reports are paced by 100 steps, and the end


def test_a_hole_in_a_larger_test_image_is_found_at_its_place(patch_model):
    root, flags = patch_model
    assert main.main([*flags, "--anomaly_test", *ONE_PASS, "--image_score", "top1",
                      "--patch_stride", "6"]) == 0
    result = root / "test" / "test_result"
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["pixel_roc_auc"] > 0.9
    assert metrics["threshold_source"] == "heldout_train_images"
    error = np.asarray(Image.open(result / "AD_error_0_hole_0.png"), np.float32)
    assert error.shape == (40, 72)
    top, left = np.unravel_index(np.argmax(error), error.shape)
    assert top in range(19, 29) and left in range(39, 51)
    assert np.asarray(Image.open(result / "AD_0_hole_0.png")).shape == (40, 72)
    rows = read_scores(result)
    holes = [float(r["anomaly_score"]) for r in rows if r["label"] == "1"]
    goods = [float(r["anomaly_score"]) for r in rows if r["label"] == "0"]
    assert min(holes) > max(goods)


def test_the_export_tiles_full_images_as_the_anomaly_test_does(patch_model, tmp_path):
    from test_export import score_outside

    root, flags = patch_model
    saved = tmp_path / "detector"
    assert main.main([*flags, "--anomaly_test", *ONE_PASS, "--residual_map", "ssim",
                      "--map_sigma", "1", "--image_score", "critic", "--test_result_dir",
                      "ssim", "--export", str(saved)]) == 0
    rows = read_scores(root / "test" / "ssim")
    files = [root / "test" / row["file"] for row in rows]
    results = score_outside(tmp_path, {saved: files})[str(saved)]
    for row, path in zip(rows, files):
        score, flagged, map_shape, fake_shape = results[str(path)]
        assert score == pytest.approx(float(row["anomaly_score"]), rel=1e-5)
        assert flagged == (row["is_anomaly"] == "1")
        assert map_shape == [1, 40, 72] and fake_shape == [1, 40, 72, 1]


@pytest.mark.parametrize(("extra", "message"), [
    (["--patch_stride", "0"], "--patch_stride must be in [1, 16] (--patch_size), not 0"),
    (["--patch_stride", "17"], "--patch_stride must be in [1, 16] (--patch_size), not 17"),
    (["--patch_size", "4"], "--patch_size must be 0 (whole images) or at least 8 pixels"),
    (["--image_scale", "0"], "--image_scale must be in (0, 1]"),
    (["--patch_size", "0", "--image_scale", "0.5"], "--image_scale needs --patch_size"),
])
def test_patch_flags_out_of_range_are_one_line(patch_model, capsys, extra, message):
    _, flags = patch_model
    capsys.readouterr()
    assert main.main([*flags, "--anomaly_test", *ONE_PASS, *extra]) == 2
    assert message in error_line(capsys)


def test_images_smaller_than_the_patch_are_refused_before_anything_is_written(
        patch_model, tmp_path, capsys):
    root, flags = patch_model
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((12, 40), np.uint8)).save(small / "thin.png")
    capsys.readouterr()
    assert main.main([*flags, "--anomaly_test", *ONE_PASS, "--test_dir", str(small)]) == 2
    assert "test image is 40x12 at --image_scale 1, smaller than the 16x16 patch" in (
        error_line(capsys))
    assert sorted(p.name for p in small.iterdir()) == ["thin.png"]
    assert main.main([*flags, "--patch_size", "56", "--train", "--epoch", "1"]) == 2
    assert "image is 64x48 at --image_scale 1, smaller than the 56x56 patch" in (
        error_line(capsys))
    assert not (root / "checkpoint" / "stripes_8_56_56").exists()


def test_a_checkpoint_is_not_used_across_patch_and_whole_image_modes(patch_model, tmp_path,
                                                                     capsys):
    _, flags = patch_model
    whole = [arg for arg in flags if arg not in ("--patch_size", "16")]
    capsys.readouterr()
    assert main.main([*whole, "--output_height", "16", "--anomaly_test", *ONE_PASS]) == 2
    assert "patch_size: checkpoint 16 vs now 0" in error_line(capsys)
    other = [*whole, "--checkpoint_dir", str(tmp_path / "ckpt"), "--output_height", "16"]
    assert main.main([*other, "--train", "--epoch", "1"]) == 0
    capsys.readouterr()
    patched = [*flags, "--checkpoint_dir", str(tmp_path / "ckpt")]
    assert main.main([*patched, "--anomaly_test", *ONE_PASS]) == 2
    assert "patch_size: checkpoint 0 vs now 16" in error_line(capsys)
