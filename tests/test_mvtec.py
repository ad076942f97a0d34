"""MVTec AD-style folders: train/good for training, test/ with ground-truth masks, pixel metrics."""

import csv
import json

import numpy as np
import pytest
from conftest import run_in_process
from PIL import Image
from sklearn.metrics import roc_auc_score

import evaluation
import inputs
import main
import model
import utils
from benchmarks import synthetic
from config import ModelConfig
from losses import anomaly_map, image_score, map_score
from search import SearchResult

FLAGS = ["--dataset", "mvtec/tex", "--output_height", "32", "--batch_size", "8",
         "--z_dim", "16", "--gf_dim", "8", "--df_dim", "8", "--retries", "0",
         "--encoder_min_steps", "0", "--encoder_patience", "0", "--learning_rate", "0.002"]


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A textured category with spot and scratch defects, a GAN trained on it, and its encoder."""
    root = tmp_path_factory.mktemp("mvtec")
    synthetic.write_texture_set(root / "data" / "mvtec" / "tex", size=32, train=48,
                                test_good=6, test_defects=5, mode="RGB")
    flags = [*FLAGS, "--data_dir", str(root / "data"), "--checkpoint_dir",
             str(root / "checkpoint"), "--sample_dir", str(root / "samples"), "--log_dir",
             str(root / "logs")]
    assert main.main([*flags, "--epoch", "4", "--encoder_epoch", "1", "--train",
                      "--train_encoder"]) == 0
    return root, flags


def read_scores(result_dir):
    with open(result_dir / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_mvtec_folder_trains_on_good_and_scores_its_test_split_with_masks(category):
    root, flags = category
    assert (root / "checkpoint" / "mvtec_tex_8_32_32" / "config.json").exists()
    assert main.main([*flags, "--anomaly_test", "--test_epoch", "3"]) == 0
    result_dir = root / "data" / "mvtec" / "tex" / "test" / "test_result"
    rows = read_scores(result_dir)
    assert len(rows) == 16
    assert {r["file"].split("/")[0] for r in rows} == {"good", "spot", "scratch"}
    assert [r["label"] for r in rows].count("0") == 6
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["pixel_roc_auc"] > 0.75
    assert set(metrics["per_type_roc_auc"]) == {"spot", "scratch"}
    assert metrics["image_score"] == "sum"
    for row in rows:  # the original's AD_ outputs stay as they were
        stem = row["file"].replace("/", "_").rsplit(".", 1)[0]
        assert Image.open(result_dir / f"AD_error_3_{stem}.png").size == (32, 32)
    assert Image.open(result_dir / "overview.png").size[0] > 100


def test_map_based_image_scores_with_the_encoder(category):
    root, flags = category
    for kind in ("top1", "smoothmax"):
        assert main.main([*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
                          "--no_figures", "--image_score", kind, "--test_result_dir", kind]) == 0
        result_dir = root / "data" / "mvtec" / "tex" / "test" / kind
        metrics = json.loads((result_dir / "metrics.json").read_text())
        assert metrics["image_score"] == kind and metrics["z_init"] == "encoder"
        assert metrics["pixel_roc_auc"] > 0.75
        rows = read_scores(result_dir)
        for row in rows[:4]:  # the score is that statistic of the (8-bit) residual map
            stem = row["file"].replace("/", "_").rsplit(".", 1)[0]
            error = np.asarray(Image.open(result_dir / f"AD_error_0_{stem}.png"), np.float32)
            maps = (error / 255.0).mean(axis=-1)[None]
            assert float(row["anomaly_score"]) == pytest.approx(
                map_score(maps, kind).numpy()[0], abs=2 / 255)
    # --residual_shift: top1 of the map that forgives 2 pixels, never above the plain top1.
    assert main.main([*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
                      "--no_figures", "--image_score", "top1", "--residual_shift", "2",
                      "--test_result_dir", "shifted"]) == 0
    test = root / "data" / "mvtec" / "tex" / "test"
    metrics = json.loads((test / "shifted" / "metrics.json").read_text())
    assert metrics["residual_shift"] == 2 and metrics["pixel_roc_auc"] is not None
    plain = {row["file"]: float(row["anomaly_score"]) for row in read_scores(test / "top1")}
    for row in read_scores(test / "shifted"):
        stem = row["file"].replace("/", "_").rsplit(".", 1)[0]
        image, fake = (np.asarray(Image.open(path), np.float32)[None] / 255.0
                       for path in (test / row["file"], test / "shifted" / f"AD_0_{stem}.png"))
        expected = map_score(anomaly_map(image, fake, (0.0, 1.0), shift=2), "top1").numpy()[0]
        assert float(row["anomaly_score"]) == pytest.approx(expected, abs=1 / 255)
        assert float(row["anomaly_score"]) <= plain[row["file"]] + 1e-6


def test_critic_image_score_is_minus_d_of_the_image_and_keeps_the_residual_maps(category):
    root, flags = category
    assert main.main([*flags, "--anomaly_test", "--z_init", "encoder", "--test_epoch", "0",
                      "--no_figures", "--image_score", "critic", "--test_result_dir",
                      "critic"]) == 0
    test = root / "data" / "mvtec" / "tex" / "test"
    metrics = json.loads((test / "critic" / "metrics.json").read_text())
    assert metrics["image_score"] == "critic" and metrics["pixel_roc_auc"] > 0.75
    rows = read_scores(test / "critic")
    dcgan = model.DCGAN(ModelConfig(32, 32, 3, z_dim=16, gf_dim=8, df_dim=8),
                        root / "checkpoint" / "mvtec_tex_8_32_32")
    assert dcgan.load()
    images = np.stack([utils.load_image(test / row["file"], (32, 32), (32, 32), False, 3)
                       for row in rows])
    logits, _ = dcgan.discriminator(images, np.zeros((len(rows), 0), np.float32))
    np.testing.assert_allclose([float(row["anomaly_score"]) for row in rows],
                               -logits.numpy()[:, 0], rtol=1e-5, atol=1e-5)
    assert len({row["anomaly_score"] for row in rows}) == len(rows)


def test_residual_shift_benchmark_reads_held_out_training_images_only(category, capsys):
    _, flags = category
    figures = json.loads(run_in_process("residual_shift", capsys, "--max_shift", "2", "--",
                                        *flags).out)
    assert figures["held_out_images"] == 4  # a tenth of the 48 training images, rounded down
    means = [figures["mean_map"][k] for k in ("0", "1", "2")]
    assert means[0] > means[1] > means[2] > 0 and figures["fraction_left"]["0"] == 1.0


def test_residual_shift_forgives_a_line_drawn_off_but_not_a_defect():
    image, fake = np.zeros((2, 1, 16, 32, 1), np.float32)
    image[0, :, 10], fake[0, :, 12] = 1.0, 1.0  # G draws the line two pixels to the right
    image[0, 5, 25] = 1.0  # a defect G does not draw
    maps = {shift: anomaly_map(image, fake, (0.0, 1.0), shift=shift).numpy()[0]
            for shift in (0, 1, 2)}
    assert maps[0][:, 10].min() == maps[0][:, 12].min() == 1.0
    assert maps[1][:, 10].min() == 1.0 and maps[1][:, 12].max() == 0.0  # x is 0 beside it
    assert maps[2][5, 25] == 1.0 and maps[2].sum() == 1.0  # only the defect is left
    rng = np.random.default_rng(2)
    x, g = rng.uniform(-1, 1, (2, 2, 9, 11, 3)).astype(np.float32)
    padded = np.pad(g, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="symmetric")
    brute = np.min([np.abs(x - padded[:, dy:dy + 9, dx:dx + 11]).mean(-1)
                    for dy in range(7) for dx in range(7)], axis=0) / 2.0
    np.testing.assert_allclose(anomaly_map(x, g, (-1.0, 1.0), shift=3).numpy(), brute, rtol=1e-6)


def test_pixel_roc_matches_sklearn_and_ignores_maps_blind_to_the_defect():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), bool)
    masks[:3, 4:12, 5:13] = True
    pointing = np.clip(0.3 * masks + rng.uniform(0, 0.5, masks.shape), 0, 1)
    blind = rng.uniform(0, 1, masks.shape)
    for maps, low, high in ((pointing, 0.85, 1.0), (blind, 0.42, 0.58)):
        roc = evaluation.PixelROC()
        for start in range(0, 6, 4):  # streamed in batches
            roc.add(maps[start:start + 4], masks[start:start + 4])
        expected = roc_auc_score(masks.ravel(), maps.ravel())
        assert roc.auc() == pytest.approx(expected, abs=2e-3) and low < roc.auc() < high
    assert evaluation.PixelROC().auc() is None


def test_map_scores_equal_their_numpy_definitions():
    from scipy.ndimage import gaussian_filter

    maps = np.random.default_rng(1).uniform(0, 1, (3, 16, 20)).astype(np.float32)
    smooth = [gaussian_filter(m, sigma=2.0).max() for m in maps]
    np.testing.assert_allclose(map_score(maps, "smoothmax").numpy(), smooth, rtol=1e-5)
    top = np.sort(maps.reshape(3, -1), axis=1)[:, -3:].mean(axis=1)  # 1 % of 320 pixels
    np.testing.assert_allclose(map_score(maps, "top1").numpy(), top, rtol=1e-6)


def test_map_scores_favour_a_small_strong_defect_over_a_faint_everywhere_one():
    small = np.zeros((1, 32, 32), np.float32)
    small[0, 10:13, 10:13] = 0.9
    faint = np.full((1, 32, 32), 0.05, np.float32)
    assert faint.sum() > small.sum()  # the original's summed residual prefers the wrong one
    for kind in ("top1", "smoothmax"):
        assert map_score(small, kind).numpy()[0] > map_score(faint, kind).numpy()[0]
    with pytest.raises(ValueError, match="--image_score"):
        map_score(small, "median")


def test_image_score_runs_the_critic_only_when_it_is_asked_for():
    maps = np.random.default_rng(2).uniform(0, 1, (2, 10, 10)).astype(np.float32)
    summed, calls = np.array([3.0, 4.0]), []

    def critic():
        calls.append(1)
        return np.array([-1.0, 2.0])

    assert image_score("sum", summed, maps, critic) is summed
    np.testing.assert_allclose(image_score("top1", summed, maps, critic),
                               map_score(maps, "top1").numpy())
    assert not calls
    np.testing.assert_array_equal(image_score("critic", summed, maps, critic), [-1.0, 2.0])
    assert calls == [1]


def test_per_type_auc_names_each_defect_folder_and_is_none_without_folders():
    names = ["good/a", "good/b", "spot/c", "scratch/d", "scratch/e", "f"]
    scores, labels = np.array([1, 2, 3, 0, 4, 9.0]), np.array([0, 0, 1, 1, 1, 1])
    assert evaluation.per_type_roc_auc(names, scores, labels) == {"scratch": 0.5, "spot": 1.0}
    assert evaluation.per_type_roc_auc(["a", "b", "c"], np.arange(3.0), np.array([0, 1, 1])) is None


def test_masks_are_cropped_and_resized_as_images_are(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[18:22, 18:22] = 255
    mask[0:4, 0:4] = 255  # outside the centre crop
    Image.fromarray(mask).save(tmp_path / "m.png")
    cropped = utils.load_mask(tmp_path / "m.png", inputs.ImageSpec((20, 20), (10, 10), crop=True))
    assert cropped.shape == (10, 10) and cropped.dtype == bool
    assert cropped.sum() == 4 and cropped[4:6, 4:6].all()
    whole = utils.load_mask(tmp_path / "m.png", inputs.ImageSpec((40, 40), (20, 20)))
    assert whole[0:2, 0:2].all() and set(np.unique(whole)) == {False, True}
    assert not utils.load_mask(None, inputs.ImageSpec((40, 40), (20, 20))).any()


def test_masks_found_beside_any_test_folder(tmp_path):
    synthetic.write_texture_set(tmp_path / "set", size=16, train=1, test_good=2, test_defects=2)
    source = inputs.test_folder_source(tmp_path / "set" / "test", tmp_path / "none", 1,
                                       mask_dir=tmp_path / "set" / "ground_truth")
    assert [m is not None for m in source.masks] == [False] * 2 + [True] * 4
    assert source.masks[2].endswith("ground_truth/scratch/000_mask.png")
    assert source.subset([3, 0]).masks == [source.masks[3], None]
    plain = inputs.test_folder_source(tmp_path / "set" / "test", tmp_path / "none", 1)
    assert plain.masks is None
    assert SearchResult(*[np.zeros(1)] * 4, {0: 1, 5: 2}).final == 2
