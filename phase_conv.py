"""Strided 'SAME' convolutions and their transposes whose gradients avoid TensorFlow's CPU
``Conv2DBackpropInput`` of its default (Eigen) kernels, 10-100x slower than a forward
convolution for a 5x5 kernel on 2x2 .. 8x8 maps (python benchmarks/conv_layers.py): a
transposed convolution runs by phases, as ``stride**2`` forward convolutions interleaved by
``depth_to_space``, where that was measured faster (CPU without oneDNN, small maps);
elsewhere (GPU, oneDNN, larger maps) ``tf.nn.conv2d_transpose`` runs.
"""

import itertools
import os
import platform

import tensorflow as tf

ONEDNN_CPU_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                              "amx_bf16"})
"""CPU features for which TensorFlow turns oneDNN on by itself (x86 Linux builds)."""


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags as the kernel lists them (empty where it does not)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            return frozenset(word for line in handle if line.startswith("flags")
                             for word in line.split(":", 1)[1].split())
    except OSError:
        return frozenset()


def onednn_enabled(environ=os.environ, flags=None):
    """Whether TensorFlow runs its CPU kernels through oneDNN.

    As TensorFlow decides: ``TF_ENABLE_ONEDNN_OPTS`` ('1'/'true' or '0'/'false') when set,
    else on for x86 CPUs with neural-network instructions (VNNI, BF16 or AMX).
    """
    setting = environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    if setting in ("1", "true", "0", "false"):
        return setting in ("1", "true")
    return platform.machine().lower() in ("x86_64", "amd64") and bool(
        ONEDNN_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def phases_are_faster():
    """Whether transposed convolutions may run by phases here: on CPUs without oneDNN (whose
    own transposes are faster, as are a GPU's). Decided when a graph is traced."""
    return not onednn_enabled() and not tf.config.list_logical_devices("GPU")


PHASE_MAX_PIXELS = 256
"""Transposed convolutions of at most this many input pixels (16x16) run as ``stride**2`` forward
convolutions, one per output phase; larger ones use ``tf.nn.conv2d_transpose``, which is faster
there (measured at batches 1 and 64 on 2 CPU cores, benchmarks/conv_layers.py)."""

PHASE_MIN_CHANNELS = 8
"""Nor do transposes to fewer output channels (an image's 1 or 3) run by phases: 3-4x slower."""


def conv2d_same(x, kernel, stride, transpose_filters=None):
    """``tf.nn.conv2d(x, kernel, stride, 'SAME')`` with a fast input gradient.

    ``transpose_filters``: ``phase_filters`` of the kernel, when prepared beforehand.
    """
    in_size = tuple(x.shape[1:3])

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            return (_transpose(dy, kernel, in_size, stride, transpose_filters),
                    _filter_grad(x, kernel, dy, stride))
        return tf.nn.conv2d(x, kernel, stride, "SAME"), grad
    return conv(x, kernel)


def conv2d_transpose_same(x, kernel, output_size, stride, transpose_filters=None):
    """``tf.nn.conv2d_transpose(x, kernel, ..., stride, 'SAME')``; kernel (k, k, out, in).

    ``transpose_filters``: ``phase_filters`` of the kernel, when prepared beforehand.
    """
    @tf.custom_gradient
    def transpose(x, kernel):
        def grad(dy):
            return tf.nn.conv2d(dy, kernel, stride, "SAME"), _filter_grad(dy, kernel, x, stride)
        return _transpose(x, kernel, tuple(output_size), stride, transpose_filters), grad
    return transpose(x, kernel)


def _filter_grad(x, kernel, dy, stride):
    """Gradient of conv2d(x, kernel, stride, 'SAME') with respect to the kernel."""
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
        strides=[1, stride, stride, 1], padding="SAME")


def _transpose(x, kernel, output_size, stride, filters=None):
    """The transposed 'SAME' convolution (static spatial sizes), by the faster kernel for them.

    By phases: output pixels (stride * u + q_h, stride * u' + q_w) of one phase (q_h, q_w) are
    a stride-1 correlation of the input with some kernel taps; ``depth_to_space`` interleaves the
    phases. The same sums as ``tf.nn.conv2d_transpose``, by forward convolutions.
    """
    in_size = tuple(x.shape[1:3])
    if filters is None:
        filters = phase_filters(kernel, in_size, output_size, stride)
    if filters is None:
        shape = tf.stack([tf.shape(x)[0], *output_size, kernel.shape[2]])
        return tf.nn.conv2d_transpose(x, kernel, shape, stride, "SAME")
    (rows, row_phases), (cols, col_phases) = (
        _axis_phases(i, o, kernel.shape[0], stride) for i, o in zip(in_size, output_size))
    padded = tf.pad(x, [[0, 0], rows, cols, [0, 0]])
    blocks = [-(-size // stride) for size in output_size]
    phases = []
    for ((top, row_taps), (left, col_taps)), phase_filter in zip(
            itertools.product(row_phases, col_phases), filters):
        window = padded[:, top:top + blocks[0] + len(row_taps) - 1,
                        left:left + blocks[1] + len(col_taps) - 1, :]
        phases.append(tf.nn.conv2d(window, phase_filter, 1, "VALID"))
    y = tf.nn.depth_to_space(tf.concat(phases, axis=-1), stride)
    return y[:, :output_size[0], :output_size[1], :]


def _axis_phases(in_size, out_size, kernel_size, stride):
    """One axis of the transpose of a 'SAME' convolution from ``out_size`` to ``in_size``.

    Returns (padding, phases): output pixel ``stride * u + q`` is the sum over j of padded input
    pixel ``u + start + j`` times kernel tap ``taps[j]``, where ``phases[q] = (start, taps)``.
    """
    before = max((in_size - 1) * stride + kernel_size - out_size, 0) // 2
    low = -((kernel_size - 1 - before) // stride)
    high = (before + stride - 1) // stride
    phases = []
    for q in range(stride):
        window = [(a, before + q - stride * (low + a)) for a in range(high - low + 1)]
        window = [(a, tap) for a, tap in window if 0 <= tap < kernel_size]
        phases.append((window[0][0], [tap for _, tap in window]))
    blocks = -(-out_size // stride)
    return [-low, max(0, blocks - in_size + high)], phases


def phase_filters(kernel, in_size, output_size, stride):
    """The per-phase filters of a transposed convolution from ``in_size``, or None.

    ``kernel`` is (k, k, out, in); one (taps_h, taps_w, in, out) filter per output phase, in
    ``depth_to_space`` order. None (``tf.nn.conv2d_transpose`` is used) where phases are not
    faster (``phases_are_faster``), for inputs larger than ``PHASE_MAX_PIXELS``, outputs of
    fewer than ``PHASE_MIN_CHANNELS`` channels or kernels smaller than the stride.
    """
    size = kernel.shape[0]
    if (in_size[0] * in_size[1] > PHASE_MAX_PIXELS
            or kernel.shape[2] < PHASE_MIN_CHANNELS or size < stride
            or not phases_are_faster()):
        return None
    (_, rows), (_, cols) = (_axis_phases(i, o, size, stride)
                            for i, o in zip(in_size, output_size))
    out_dim, in_dim = kernel.shape[2:]
    taps = tf.reshape(tf.transpose(kernel, [0, 1, 3, 2]), (size * size, in_dim, out_dim))
    return tuple(tf.gather(taps, [[th * size + tw for tw in col_taps] for th in row_taps])
                 for _, row_taps in rows for _, col_taps in cols)
