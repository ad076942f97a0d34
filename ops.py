"""Layer helpers of the original DCGAN, as Keras layers with its initialisers.

Kernels are 5x5 with stride 2 and 'SAME' padding; weights are drawn from N(0, 0.02)
(truncated for convolutions, as ``tf.truncated_normal_initializer`` in the original),
biases start at zero, and batch norm uses epsilon 1e-5 and momentum 0.9.
"""

import contextlib
import itertools
import os
import platform

import keras
import tensorflow as tf

STDDEV = 0.02


def conv2d(output_dim, kernel=5, stride=2, name=None):
    """A strided 'SAME' convolution with a truncated-normal kernel."""
    return Conv2D(
        output_dim, kernel, strides=stride, padding="same",
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=STDDEV),
        bias_initializer="zeros", name=name)


def linear(output_dim, name=None):
    """A dense layer with a normal kernel, as the original ``linear``."""
    return keras.layers.Dense(
        output_dim, kernel_initializer=keras.initializers.RandomNormal(stddev=STDDEV),
        bias_initializer="zeros", name=name)


def batch_norm(name=None):
    """Batch normalisation with the original's epsilon and momentum."""
    return keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)


class LayerNorm(keras.layers.Layer):
    """Layer normalisation of each example over all its axes, with a per-channel scale and
    offset: the normalisation of WGAN-GP's critic (f-AnoGAN's ``Layernorm`` over C, H, W)."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")
        self.offset = self.add_weight(name="offset", shape=(input_shape[-1],),
                                      initializer="zeros")

    def call(self, x, training=False):
        mean, variance = tf.nn.moments(x, list(range(1, len(x.shape))), keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + 1e-5) * self.scale + self.offset


def lrelu(x, leak=0.2):
    """Leaky ReLU with the original's slope."""
    return tf.maximum(x, leak * x)


def flat(tensor):
    """(batch, everything else) view of a batch of images or feature maps."""
    return tf.reshape(tensor, (tf.shape(tensor)[0], -1))


def conv_cond_concat(x, y):
    """Concatenates a one-hot label ``y`` (batch, y_dim) to every pixel of ``x``."""
    shape = tf.shape(x)
    y_map = tf.ones([shape[0], shape[1], shape[2], 1], x.dtype) * tf.cast(
        y[:, None, None, :], x.dtype)
    return tf.concat([x, y_map], axis=3)


def halve(size):
    """Spatial size after one stride-2 'SAME' convolution (ceil-halving: 7 -> 4)."""
    return -(-size // 2)


class FreezableConv:
    """Mixin of a strided 'SAME' convolution layer whose transposed filters can be prepared once.

    ``frozen_filters`` are the filters of the transposed direction (G's forward, D's input
    gradient); None means they are derived from the kernel on every call.
    """

    frozen_filters = None

    def transposed_sizes(self):
        """(input size, output size) of the layer's transposed direction."""
        raise NotImplementedError

    @contextlib.contextmanager
    def frozen(self):
        """Within: the weights count as fixed; the transposed filters are prepared once."""
        self.frozen_filters = phase_filters(self.kernel, *self.transposed_sizes(), self.stride)
        try:
            yield
        finally:
            self.frozen_filters = None


@contextlib.contextmanager
def frozen(*models):
    """Freezes the ``FreezableConv`` layers directly in ``models`` (e.g. for the latent search)."""
    with contextlib.ExitStack() as stack:
        for model in models:
            for layer in model.layers:
                if isinstance(layer, FreezableConv):
                    stack.enter_context(layer.frozen())
        yield


class Conv2D(FreezableConv, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` ('SAME', square stride) whose input gradient is fast on CPU."""

    @property
    def stride(self):
        return self.strides[0]

    def build(self, input_shape):
        super().build(input_shape)
        self.input_size = tuple(input_shape[1:3])

    def transposed_sizes(self):
        return tuple(-(-s // self.stride) for s in self.input_size), self.input_size

    def convolution_op(self, inputs, kernel):
        return conv2d_same(inputs, tf.cast(kernel, inputs.dtype), self.stride,
                           self.frozen_filters)


class Deconv2D(FreezableConv, keras.layers.Layer):
    """Transposed convolution to an explicit output size, as ``tf.nn.conv2d_transpose``.

    An explicit size lets odd sizes round-trip (4 -> 7 for 28x28 MNIST), which a plain
    ``Conv2DTranspose`` (always doubling) cannot do.
    """

    def __init__(self, output_dim, output_size, kernel=5, stride=2, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.output_size = tuple(output_size)
        self.kernel_size = kernel
        self.stride = stride

    def build(self, input_shape):
        self.input_size = tuple(input_shape[1:3])
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, self.output_dim, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=STDDEV))
        self.bias = self.add_weight(name="bias", shape=(self.output_dim,), initializer="zeros")

    def transposed_sizes(self):
        return self.input_size, self.output_size

    def call(self, x):
        y = conv2d_transpose_same(x, tf.cast(self.kernel, x.dtype), self.output_size,
                                  self.stride, self.frozen_filters)
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, self.output_dim)


# Strided 'SAME' convolutions and their transposes, with gradients that avoid TensorFlow's CPU
# Conv2DBackpropInput of its default (Eigen) kernels, 10-100x slower than a forward convolution
# for a 5x5 kernel on 2x2 .. 8x8 maps (python benchmarks/conv_layers.py).


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


PHASE_TRANSPOSES = not onednn_enabled()
"""Whether transposed convolutions may run by phases: oneDNN's own transposes are faster."""

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
    ``depth_to_space`` order. None (``tf.nn.conv2d_transpose`` is used) under oneDNN, for inputs
    larger than ``PHASE_MAX_PIXELS``, outputs of fewer than ``PHASE_MIN_CHANNELS`` channels or
    kernels smaller than the stride.
    """
    size = kernel.shape[0]
    if (not PHASE_TRANSPOSES or in_size[0] * in_size[1] > PHASE_MAX_PIXELS
            or kernel.shape[2] < PHASE_MIN_CHANNELS or size < stride):
        return None
    (_, rows), (_, cols) = (_axis_phases(i, o, size, stride)
                            for i, o in zip(in_size, output_size))
    out_dim, in_dim = kernel.shape[2:]
    taps = tf.reshape(tf.transpose(kernel, [0, 1, 3, 2]), (size * size, in_dim, out_dim))
    return tuple(tf.gather(taps, [[th * size + tw for tw in col_taps] for th in row_taps])
                 for _, row_taps in rows for _, col_taps in cols)
