"""Layer helpers of the original DCGAN, as Keras layers with its initialisers.

Kernels are 5x5 with stride 2 and 'SAME' padding; weights are drawn from N(0, 0.02)
(truncated for convolutions, as ``tf.truncated_normal_initializer`` in the original),
biases start at zero, and batch norm uses epsilon 1e-5 and momentum 0.9.
"""

import keras
import tensorflow as tf

STDDEV = 0.02


def conv2d(output_dim, kernel=5, stride=2, name=None):
    """A strided 'SAME' convolution with a truncated-normal kernel."""
    return keras.layers.Conv2D(
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


def lrelu(x, leak=0.2):
    """Leaky ReLU with the original's slope."""
    return tf.maximum(x, leak * x)


def conv_cond_concat(x, y):
    """Concatenates a one-hot label ``y`` (batch, y_dim) to every pixel of ``x``."""
    shape = tf.shape(x)
    y_map = tf.ones([shape[0], shape[1], shape[2], 1], x.dtype) * tf.cast(
        y[:, None, None, :], x.dtype)
    return tf.concat([x, y_map], axis=3)


def halve(size):
    """Spatial size after one stride-2 'SAME' convolution (ceil-halving: 7 -> 4)."""
    return -(-size // 2)


class Deconv2D(keras.layers.Layer):
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
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, self.output_dim, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=STDDEV))
        self.bias = self.add_weight(name="bias", shape=(self.output_dim,), initializer="zeros")

    def call(self, x):
        height, width = self.output_size
        output_shape = tf.stack([tf.shape(x)[0], height, width, self.output_dim])
        y = tf.nn.conv2d_transpose(
            x, tf.cast(self.kernel, x.dtype), output_shape,
            strides=[1, self.stride, self.stride, 1], padding="SAME")
        return tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, self.output_dim)
