"""Layer helpers of the original DCGAN, as Keras layers with its initialisers.

Kernels are 5x5 with stride 2 and 'SAME' padding; weights are drawn from N(0, 0.02)
(truncated for convolutions, as ``tf.truncated_normal_initializer`` in the original),
biases start at zero, and batch norm uses epsilon 1e-5 and momentum 0.9.
"""

import contextlib

import keras
import tensorflow as tf

from phase_conv import conv2d_same, conv2d_transpose_same, phase_filters

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


class PhaseTransposable:
    """Mixin of a strided 'SAME' convolution layer whose transposed filters can be prepared once.

    ``prepared_filters`` are the per-phase filters of the transposed direction (G's forward,
    D's input gradient, ``phase_conv.phase_filters``); None means they are derived from the
    kernel on every call.
    """

    prepared_filters = None

    def transposed_sizes(self):
        """(input size, output size) of the layer's transposed direction."""
        raise NotImplementedError

    @contextlib.contextmanager
    def prepared_transposes(self):
        """Within: the kernel is taken as fixed and its transposed filters are prepared once."""
        self.prepared_filters = phase_filters(self.kernel, *self.transposed_sizes(), self.stride)
        try:
            yield
        finally:
            self.prepared_filters = None


@contextlib.contextmanager
def prepared_transposes(*models):
    """Within: the ``PhaseTransposable`` layers directly in ``models`` use transposed filters
    prepared once (their weights must not change: the latent search, encoder training)."""
    with contextlib.ExitStack() as stack:
        for model in models:
            for layer in model.layers:
                if isinstance(layer, PhaseTransposable):
                    stack.enter_context(layer.prepared_transposes())
        yield


class Conv2D(PhaseTransposable, keras.layers.Conv2D):
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
                           self.prepared_filters)


class Deconv2D(PhaseTransposable, keras.layers.Layer):
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
                                  self.stride, self.prepared_filters)
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, self.output_dim)
