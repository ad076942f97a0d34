"""The benchmark scripts run on tiny shapes and print the figures they promise, as JSON.

They run in this process (no TensorFlow start-up of their own; thread counts are left at
TensorFlow's defaults; the memory benchmark measures its own children).
"""

import importlib
import json

import numpy as np
import pytest
from conftest import benchmark_module, read_scores, run_in_process
from PIL import Image
from sklearn.metrics import roc_auc_score

TINY = ["--height", "16", "--channels", "3", "--batch", "2"]
TINY_MODEL = "--extra=--gf_dim 8 --df_dim 8 --z_dim 8"


def test_latent_search_prints_speedup_and_roofline(capsys):
    figures = json.loads(run_in_process("latent_search", capsys, *TINY, "--steps", "2",
                                        "--per_image", "1", "--repeats", "2",
                                        "--matmul_seconds", "0.2").out)
    for key in ("per_image_img_iter_per_s", "batched_img_iter_per_s", "matmul_gflops",
                "roofline_ratio", "speedup_at_matmul_rate"):
        assert figures[key] > 0
    assert figures["speedup"] == pytest.approx(
        figures["batched_img_iter_per_s"] / figures["per_image_img_iter_per_s"], abs=0.01)
    assert figures["flops_per_img_iter"] > 0
    assert isinstance(figures["onednn"], bool)


@pytest.mark.parametrize("gan", ["dcgan", "wgan_gp"])
def test_train_step_prints_images_per_second_and_roofline(gan, tmp_path, capsys):
    record = tmp_path / "records" / f"{gan}.json"
    figures = json.loads(run_in_process("train_step", capsys, *TINY, "--steps", "1",
                                        "--matmul_seconds", "0.2", "--gan", gan, "--gf_dim",
                                        "8", "--df_dim", "8", "--record", record).out)
    assert figures["images_per_s"] > 0 and figures["gan"] == gan
    assert 0 < figures["roofline_ratio"] == pytest.approx(
        figures["gflops"] / figures["matmul_gflops"], abs=0.01)
    saved = json.loads(record.read_text())
    assert {**saved, "benchmark": None} == {**figures, **{k: saved[k] for k in (
        "command", "commit", "date", "machine")}, "benchmark": None}
    assert saved["command"].startswith("python benchmarks/train_step.py --height 16")


def test_conv_layers_times_every_convolution_both_ways(capsys):
    figures = json.loads(run_in_process("conv_layers", capsys, *TINY, "--seconds", "0.01").out)
    assert len(figures["layers"]) == 8
    assert all(ms > 0 for ms in figures["total_ms"].values())


def test_scoring_memory_prints_peak_rss_per_size(capsys):
    figures = json.loads(run_in_process("scoring_memory", capsys, "--dataset", "mvtec", "--sizes",
                                        "8", "16", TINY_MODEL + " --output_height 16 "
                                        "--no_figures").out)
    assert figures["dataset"] == "mvtec" and set(figures["peak_rss_mb"]) == {"8", "16"}
    assert figures["ratio"] > 0


def test_scoring_memorys_mnist_set_is_one_class_training_and_a_mixed_test_split(tmp_path):
    """The ``--dataset mnist`` branch's data, read back as main.py reads it (its scoring runs
    the same processes as the mvtec branch above)."""
    scoring_memory = benchmark_module("scoring_memory")
    inputs = importlib.import_module("inputs")
    scoring_memory.write_data(tmp_path, "mnist", 50)
    folder = tmp_path / "data" / "mnist"
    train, train_labels = inputs.load_mnist(folder, "train")
    test, test_labels = inputs.load_mnist(folder, "test")
    assert train.shape == (160, 28, 28, 1) and set(train_labels) == {0}
    assert test.shape == (50, 28, 28, 1) and len(set(test_labels)) > 1
    flags = scoring_memory.flags(tmp_path, "mnist", "--z_dim 8")
    assert flags[:4] == ["--dataset", "mnist", "--normal_class", "0"] and flags[-2:] == [
        "--z_dim", "8"]


def test_mvtec_synthetic_prints_image_and_pixel_aucs(tmp_path, capsys):
    figures = json.loads(run_in_process(
        "mvtec_synthetic", capsys, "--size", "16", "--train", "16", "--test_good", "4",
        "--test_defects", "2", "--batch_size", "8", "--epochs", "1", "--encoder_epoch", "1",
        "--modes", "b", "--image_scores", "sum,top1", "--work_dir", tmp_path,
        TINY_MODEL + " --encoder_min_steps 2 --encoder_patience 0 --min_steps 4 --retries 0"
        " --no_figures").out)
    assert figures["test_images"] == 8
    assert figures["mean_image_baseline"]["pixel_roc_auc"] > 0.6  # spots and scratches
    # 16 images less a held-out tenth at batch 8: 1 step per epoch, so --min_steps sets it.
    assert figures["gan_steps"] == 4 and figures["encoder_steps"] == 2
    for name in ("b_sum", "b_top1"):
        rows = read_scores(tmp_path / "data" / "mvtec" / "synthetic" / "test" / name)
        expected = roc_auc_score([int(r["label"]) for r in rows],
                                 [float(r["anomaly_score"]) for r in rows])
        assert figures[name]["roc_auc"] == pytest.approx(expected, abs=1e-6)
        assert set(figures[name]["per_type_roc_auc"]) == {"spot", "scratch"}


def test_mnist_one_class_keeps_every_run_per_seed_and_reuses_them(tmp_path, capsys):
    from conftest import write_mnist

    write_mnist(tmp_path / "data" / "mnist", train_per_digit=30, test_per_digit=3)
    flags = ["--data_dir", str(tmp_path / "data"), "--digits", "1", "--seeds", "0,1",
             "--epochs", "1", "--test_size", "20", "--test_epoch", "2", "--batch_size", "8",
             "--modes", "b_izif", "--work_dir", str(tmp_path / "work"), "--retries", "0",
             "--encoder_min_steps", "2", "--encoder_patience", "0",
             "--records", str(tmp_path / "records"), TINY_MODEL + " --no_figures"]
    decoder, text, rows = json.JSONDecoder(), run_in_process("mnist_one_class", capsys,
                                                              *flags).out.strip(), []
    while text:
        row, end = decoder.raw_decode(text)
        rows.append(row)
        text = text[end:].strip()
    assert len(rows) == 3
    runs, summary = rows[:2], rows[2]["summary"]
    assert [(r["digit"], r["seed"], r["training_seed"]) for r in runs] == [(1, 0, 0), (1, 1, 1)]
    assert runs[0]["published_anogan_roc_auc"] == {"deep_svdd": 0.992, "cheng_2020": 0.998}
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [
        "dcgan_e1_E2_d1_s0.json", "dcgan_e1_E2_d1_s1.json"]
    assert all(r["encoder_min_steps"] == 2 and r["b_izif"]["encoder_steps"] >= 2
               and r["encoder_patience"] == 0 and r["encoder_stop"] is None for r in runs)
    assert runs[0]["command"].startswith("python benchmarks/mnist_one_class.py --data_dir")
    assert {"commit", "date", "machine"} <= set(runs[0])
    assert all({"diversity", "fidelity"} <= set(r["health"]["gan"]) for r in runs)
    assert all("encoder_vs_mean" in r["health"]["encoder"] for r in runs)
    assert runs[0]["seconds_per_epoch"] > 0
    per_digit = summary["per_digit"]["1"]["b_izif"]
    aucs = [r["b_izif"]["roc_auc"] for r in runs]
    assert per_digit["mean"] == pytest.approx(sum(aucs) / 2, abs=1e-4) and per_digit["n"] == 2
    assert summary["runs"] == 2 and summary["seeds"] == [0, 1]
    assert summary["health_failed_gan"] == [[1, 0], [1, 1]]  # tiny GANs collapse
    again, err = run_in_process("mnist_one_class", capsys, *flags)
    assert "already trained" not in err  # the records alone
    assert json.loads(again[again.index('{\n  "summary"'):])["summary"][
        "per_digit"]["1"]["b_izif"] == per_digit


def write_scores(path, names, labels, scores):
    """A ``scores.csv`` as ``--anomaly_test`` writes it (the columns the interval reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{n},{y},{s},0,0,{y}" for n, y, s in zip(names, labels, scores)]
    path.write_text("file,label,anomaly_score,residual_loss,discrimination_loss,is_anomaly\n"
                    + "\n".join(rows) + "\n")
    return path


def test_roc_auc_interval_gives_each_runs_auc_and_an_interval_around_their_mean(tmp_path, capsys):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [30, 70])
    runs = []
    for seed in range(3):
        scores = rng.normal(size=100) + 1.5 * labels
        names = [f"test_{seed}_{i:03d}" for i in range(100)]
        runs.append((write_scores(tmp_path / f"s{seed}" / "scores.csv", names, labels, scores),
                     roc_auc_score(labels, scores)))
    out = json.loads(run_in_process("roc_auc_interval", capsys, *[path for path, _ in runs],
                                    "--resamples", 300, "--reference", 0.5).out)
    assert out["draw"] == "per_run" and out["normal_images"] == [30] * 3
    assert out["roc_auc"] == pytest.approx([auc for _, auc in runs], abs=1e-4)
    low, high = out["interval_95_over_images"]
    assert low < out["mean"] < high and high - low < 0.2
    assert out["se_of_mean_over_runs"] == pytest.approx(out["sd_over_runs"] / 3 ** 0.5, abs=1e-4)
    assert out["share_at_or_above_reference"] == 1.0


def test_roc_auc_interval_shares_one_draw_between_runs_of_the_same_images(tmp_path, capsys):
    names, labels = [f"test_{i}" for i in range(8)], [0, 0, 0, 0, 1, 1, 1, 1]
    same = [write_scores(tmp_path / f"r{i}" / "scores.csv", names, labels, range(8))
            for i in range(2)]
    out = json.loads(run_in_process("roc_auc_interval", capsys, *same, "--resamples", 50).out)
    assert out["draw"] == "shared" and out["roc_auc"] == [1.0, 1.0]
    assert out["interval_95_over_images"] == [1.0, 1.0]


def test_roc_auc_interval_refuses_runs_without_normal_images(tmp_path, capsys):
    path = write_scores(tmp_path / "scores.csv", ["a", "b"], [1, 1], [0.1, 0.2])
    with pytest.raises(SystemExit, match="both normal"):
        run_in_process("roc_auc_interval", capsys, path)


def test_roc_auc_interval_names_a_file_that_is_no_scores_csv(tmp_path, capsys):
    other = tmp_path / "metrics.json"
    other.write_text('{"roc_auc": 0.9}\n')
    with pytest.raises(SystemExit, match="metrics.json is not a readable scores.csv"):
        run_in_process("roc_auc_interval", capsys, other)


def test_roc_auc_interval_names_a_scores_csv_with_a_short_row(tmp_path, capsys):
    short = tmp_path / "scores.csv"
    short.write_text("file,label,anomaly_score\na,0,0.1\nb,1\n")
    with pytest.raises(SystemExit, match="scores.csv is not a readable scores.csv"):
        run_in_process("roc_auc_interval", capsys, short)


def test_the_committed_results_page_is_what_report_writes(tmp_path):
    report = benchmark_module("report")
    assert report.main(["--check"]) == 0, "run python benchmarks/report.py"
    changed = tmp_path / "results.md"
    changed.write_text(report.report(report.ROOT / "benchmarks" / "results") + "typed by hand\n")
    assert report.main(["--check", "--out", str(changed)]) == 1


def test_report_tables_are_computed_from_the_records(tmp_path):
    report = benchmark_module("report")
    folder = tmp_path / "mnist_one_class"
    folder.mkdir()
    for seed, auc in enumerate((0.9, 0.8)):
        (folder / f"dcgan_e5_d3_s{seed}.json").write_text(json.dumps({
            "b_izif": {"roc_auc": auc}, "health": {"gan": {"passed": seed == 0}},
            "commit": "abc1234", "date": "2026-12-01", "machine": "2 CPU cores, no GPU"}))
    (folder / "wgan_gp_e50_E2500_d3_s0.json").write_text(json.dumps({
        "b_izif": {"roc_auc": 0.95, "encoder_steps": 2506}, "health": {"gan": {"passed": True}}}))
    (folder / "wgan_gp_e50_rule_d3_s0.json").write_text(json.dumps({
        "b_izif": {"roc_auc": 0.96, "encoder_steps": 1500}, "health": {"gan": {"passed": True}},
        "encoder_stop": {"reason": "plateau", "step": 1500}}))
    (tmp_path / "train_step").mkdir()
    (tmp_path / "train_step" / "wgan_gp.json").write_text(json.dumps({
        "gan": "wgan_gp", "height": 32, "width": 32, "channels": 1, "batch": 32, "gf_dim": 32,
        "df_dim": 32, "steps_per_s": 5.9, "images_per_s": 190.0, "gflops": 53.5,
        "matmul_gflops": 92.6, "roofline_ratio": 0.578, "machine": "x86_64, 2 cores, CPU",
        "commit": "abc1234", "date": "2026-12-08"}))
    (tmp_path / "small_folder").mkdir()
    (tmp_path / "small_folder" / "d3.json").write_text(json.dumps({
        "digit": 3, "train_images": 120, "gan_steps": 1000, "encoder_steps": 1750,
        "encoder_stop": "plateau", "recommended": {"roc_auc": 0.91},
        "encoder_sum": {"roc_auc": 0.93}, "original_search": {"roc_auc": 0.8},
        "health": {"gan": {"passed": True}, "encoder": {"passed": True}},
        "machine": "x86_64, 2 cores, CPU", "commit": "abc1234", "date": "2026-12-08"}))
    text = report.report(tmp_path)
    assert ("| 3 | 120 | 1000 / 1750 (plateau) | 0.910 | 0.930 | 0.800 | passed | "
            "x86_64, 2 cores, CPU | abc1234 | 2026-12-08 |") in text
    assert ("| wgan_gp | 32x32x1, 32 | 32 / 32 | 5.9 | 190.0 | 53.5 | 92.6 | 0.578 | "
            "x86_64, 2 cores, CPU | abc1234 | 2026-12-08 |") in text
    assert "| 3 | 0 | 1500 (plateau) | 0.960 | 0.950 | passed |" in text
    assert "| 3 | 0,1 | 0.900 0.800 | 0.850 ± 0.071 | 1 of 2 | 0.887 / 0.913 |" in text
    assert "Mean over all 2 runs: **0.850**" in text and "commits abc1234; 2026-12-01" in text


def test_textures_builds_a_photo_category_and_scores_the_mean_patch(tmp_path, capsys):
    record_dir = tmp_path / "records"
    figures = json.loads(run_in_process("textures", capsys, "--category", "brick", "--mode",
                                        "mean", "--work_dir", tmp_path, "--record",
                                        record_dir).out)
    category = tmp_path / "data" / "brick"
    counts = {folder.name: len(list(folder.glob("*.png")))
              for folder in (category / "test").iterdir()}
    assert counts == {"good": 40, "scratch": 15, "stain": 15, "hole": 15, "foreign": 15,
                      "crack": 15}
    assert len(list((category / "train" / "good").glob("*.png"))) == 40
    for mask in (category / "ground_truth").rglob("*_mask.png"):
        assert np.asarray(Image.open(mask)).any(), mask
    assert set(figures["per_type_roc_auc"]) == set(counts) - {"good"}
    assert figures["pixel_roc_auc"] > 0.6 and 0 < figures["pro_auc"] < 1  # holes, pastes
    assert json.loads((record_dir / "brick_mean_s0.json").read_text())["commit"]
