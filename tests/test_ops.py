"""ops.py's layers and phase_conv.py's strided convolutions and transposes equal TensorFlow's,
values and gradients; the phase kernels are used only where they are faster."""

import numpy as np
import pytest
import tensorflow as tf

import ops
import phase_conv

# (input size of the transposed convolution, its output size): even, odd, non-square, 1x1,
# and a size large enough for tf.nn.conv2d_transpose itself.
SIZES = [((2, 2), (4, 4)), ((4, 4), (7, 7)), ((4, 3), (7, 5)), ((1, 1), (2, 1)),
         ((3, 5), (6, 9)), ((17, 16), (33, 32))]


def values(rng, *shape):
    return tf.constant(rng.normal(size=shape), tf.float32)


@pytest.mark.parametrize(("small", "large"), SIZES)
@pytest.mark.parametrize("prepared", [False, True])
def test_transpose_and_conv_match_tensorflow(small, large, prepared):
    rng = np.random.default_rng(0)
    batch, channels_small, channels_large = 3, 6, phase_conv.PHASE_MIN_CHANNELS
    kernel = values(rng, 5, 5, channels_large, channels_small)
    x_small = values(rng, batch, *small, channels_small)
    x_large = values(rng, batch, *large, channels_large)
    filters = phase_conv.phase_filters(kernel, small, large, 2) if prepared else None
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x_small, x_large, kernel])
        ours = [phase_conv.conv2d_transpose_same(x_small, kernel, large, 2, filters),
                phase_conv.conv2d_same(x_large, kernel, 2, filters)]
        theirs = [tf.nn.conv2d_transpose(x_small, kernel, (batch, *large, channels_large), 2,
                                         "SAME"),
                  tf.nn.conv2d(x_large, kernel, 2, "SAME")]
    for mine, reference, source in zip(ours, theirs, (x_small, x_large)):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-4)
        weights = values(rng, *reference.shape)
        for got, want in zip(tape.gradient(mine, [source, kernel], weights),
                             tape.gradient(reference, [source, kernel], weights)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not phase_conv.phases_are_faster(), reason="oneDNN's transposes are used")
def test_phase_filters_only_for_small_inputs_to_enough_channels():
    kernel = tf.zeros((5, 5, phase_conv.PHASE_MIN_CHANNELS, 3))
    assert len(phase_conv.phase_filters(kernel, (16, 16), (32, 32), 2)) == 4
    assert phase_conv.phase_filters(kernel, (17, 16), (33, 32), 2) is None
    assert phase_conv.phase_filters(tf.zeros((5, 5, 3, 8)), (8, 8), (16, 16), 2) is None


@pytest.mark.skipif(not phase_conv.phases_are_faster(), reason="oneDNN's transposes are used")
def test_transposes_are_prepared_only_inside():
    layer = ops.Deconv2D(phase_conv.PHASE_MIN_CHANNELS, (7, 7))
    layer.build((None, 4, 4, 5))
    with layer.prepared_transposes():
        assert len(layer.prepared_filters) == 4
    assert layer.prepared_filters is None


def test_no_phases_under_onednn_or_a_gpu(monkeypatch):
    kernel = tf.zeros((5, 5, phase_conv.PHASE_MIN_CHANNELS, 3))
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    assert phase_conv.phase_filters(kernel, (4, 4), (8, 8), 2) is None
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setattr(phase_conv.tf.config, "list_logical_devices",
                        lambda kind=None: ["/device:GPU:0"] if kind == "GPU" else [])
    assert phase_conv.phase_filters(kernel, (4, 4), (8, 8), 2) is None
    monkeypatch.undo()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert len(phase_conv.phase_filters(kernel, (4, 4), (8, 8), 2)) == 4


def test_onednn_detection_follows_tensorflows_rules():
    assert phase_conv.onednn_enabled({"TF_ENABLE_ONEDNN_OPTS": "1"}, frozenset())
    assert phase_conv.onednn_enabled({"TF_ENABLE_ONEDNN_OPTS": "True"}, frozenset())
    assert not phase_conv.onednn_enabled({"TF_ENABLE_ONEDNN_OPTS": "0"}, frozenset({"amx_tile"}))
    assert phase_conv.onednn_enabled({}, frozenset({"avx2", "avx512_vnni"})) == (
        phase_conv.platform.machine().lower() in ("x86_64", "amd64"))
    assert not phase_conv.onednn_enabled({}, frozenset({"avx2", "fma"}))
    try:  # TensorFlow's own answer, where its private module is there to ask
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return
    assert phase_conv.onednn_enabled() == bool(_pywrap_util_port.IsMklEnabled())
