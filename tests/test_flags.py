"""Every flag value at and past its limits, as a new user would type it: one 'error:' line,
exit code 2, no traceback, and nothing written."""

import numpy as np
import pytest
from conftest import exit_code
from PIL import Image

FOLDER = ["--dataset", "rings", "--input_fname_pattern", "*.png", "--output_height", "16",
          "--batch_size", "8", "--gf_dim", "8", "--df_dim", "8", "--z_dim", "8"]
TOO_LARGE = "9223372036854775808"

CASES = [
    (["--epoch", "0"], "--epoch must be positive"),
    (["--epoch", "2147483648"], "--epoch 2147483648 is too large: at most 2147483647"),
    (["--min_steps", "-1"], "--min_steps must be >= 0"),
    (["--test_epoch", TOO_LARGE], f"--test_epoch {TOO_LARGE} is too large"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--seed", "4294967296"], "--seed 4294967296 is too large: at most 4294967295"),
    (["--z_dim", "0"], "--z_dim/--gf_dim/--df_dim must be > 0"),
    (["--z_dim", "2000000000"], "GiB are available"),
    (["--gf_dim", TOO_LARGE], "is too large"),
    (["--batch_size", "0"], "batch sizes must be positive"),
    (["--test_batch_size", "1000000", "--test_restarts", "1000"], "GiB are available"),
    (["--output_height", "7"], "--output_height/width must be >= 8"),
    (["--output_height", "100000"], "GiB are available"),
    (["--n_critic", "0"], "--n_critic must be positive"),
    (["--retries", "-1"], "--retries must be >= 0"),
    (["--save_every", "0"], "--save_every/--sample_every must be > 0"),
    (["--encoder_max_steps", "10", "--encoder_min_steps", "20"],
     "--encoder_max_steps must be positive and at least --encoder_min_steps"),
    (["--encoder_patience", "-1"], "--encoder_patience must be >= 0"),
    (["--encoder_check_every", "0"], "--encoder_check_every must be positive"),
    (["--test_restarts", "0"], "--test_restarts must be positive"),
    (["--test_size", "0"], "--test_size must be positive"),
    (["--generate_test_images", "0"], "--generate_test_images must be positive"),
    (["--residual_shift", "9"], "--residual_shift must be in [0, 8] pixels"),
    (["--map_sigma", "-1"], "--map_sigma must be in [0, 64.0] pixels"),
    (["--map_sigma", "4"], "--map_sigma 4 reaches 16 pixels, more than the 16x16 maps"),
    (["--learning_rate", "0"], "learning rates must be > 0"),
    (["--learning_rate", "nan"], "expected a finite number"),
    (["--beta1", "1"], "--beta1 must be in [0, 1)"),
    (["--beta2", "-0.1"], "--beta2 must be in [0, 1)"),
    (["--gp_weight", "-1"], "--gp_weight must be >= 0"),
    (["--ano_lambda", "1.5"], "--ano_lambda must be in [0, 1]"),
    (["--train_size", "0"], "--train_size must be at least 1"),
    (["--threshold", "inf"], "expected a finite number"),
    (["--image_scale", "1.5"], "--image_scale must be in (0, 1]"),
    (["--patch_size", "8", "--patch_stride", "9"], "--patch_stride must be in [1, 8]"),
    (["--y_dim", "10"], "--y_dim needs labels"),
    (["--normal_class", "3"], "--normal_class applies to --dataset mnist only"),
    (["--devices", "/cpu:0"], "--devices needs --strategy mirrored"),
    (["--strategy", "mirrored", "--devices", "/gpu:7"], "--devices /gpu:7: no such device"),
    (["--strategy", "mirrored", "--devices", "nonsense"], "--devices nonsense: no such device"),
    (["--dataset", ""], "--dataset must name mnist or a folder"),
    (["--input_fname_pattern", ""], "--input_fname_pattern must be a file pattern"),
    (["--checkpoint_dir", "notes.txt"], "--checkpoint_dir notes.txt is a file, not a folder"),
    (["--log_dir", "notes.txt"], "--log_dir notes.txt is a file, not a folder"),
    (["--test_result_dir", "a/b"], "--test_result_dir must be one folder name"),
    (["--z_dim", "abc"], "argument --z_dim: invalid int value: 'abc'"),
    (["--epoch", "1.5"], "argument --epoch: invalid int value: '1.5'"),
    (["--test_dir", "nowhere"], "no test images in nowhere"),
]


@pytest.fixture
def user_folder(workdir):
    """A user's folder: 24 images in data/rings/ and a notes file; its listing."""
    rng = np.random.default_rng(0)
    (workdir / "data" / "rings").mkdir()
    for index in range(24):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
            workdir / "data" / "rings" / f"{index}.png")
    (workdir / "notes.txt").write_text("mine")
    return workdir


def listing(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.parametrize(("extra", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_bad_flag_is_one_error_line_and_nothing_is_written(user_folder, capsys, extra,
                                                             message):
    before = listing(user_folder)
    capsys.readouterr()
    assert exit_code([*FOLDER, *extra, "--train", "--anomaly_test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
    assert listing(user_folder) == before
