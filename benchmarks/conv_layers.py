"""Per-layer timings of the DCGAN's strided convolutions: TensorFlow's own ops vs phase_conv.py's.

    python benchmarks/conv_layers.py [--height 28 --channels 1 --batch 64]

Prints one JSON object: for each convolution of G and D (at the shapes of a DCGAN of that
size), milliseconds and GFLOP/s (counted from the layer shape) of the forward pass and of the
input gradient (what the latent search needs), with TensorFlow's ops (``tf.nn.conv2d``,
``tf.nn.conv2d_transpose`` and their registered gradients, as the original) and with phase_conv.py's
(transposes by output phase, filters prepared once as in the search). A large ``tf.matmul`` is
measured in the same run for reference.
"""

import tempfile
import time

import common
import tensorflow as tf

import model
import ops
import phase_conv
from config import ModelConfig


def parse_args(argv=None):
    parser = common.shape_parser(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per measurement")
    return parser.parse_args(argv)


def milliseconds(function, *args, seconds=0.5):
    """Mean wall time of ``function(*args)`` in ms, after one warm-up call."""
    function(*args)
    count, started = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - started < seconds:
        function(*args)
        count += 1
    return (time.perf_counter() - started) / count * 1e3


def input_gradient(forward):
    """A compiled function giving d(sum(forward(x) * dy))/dx."""
    @tf.function
    def gradient(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = forward(x)
        return tape.gradient(y, x, output_gradients=dy)
    return gradient


def layer_cases(layer, batch):
    """(name, input, output, {implementation: (forward, input gradient)}) of one layer."""
    kernel = tf.convert_to_tensor(layer.kernel)
    stride = layer.stride
    if isinstance(layer, ops.Deconv2D):
        x = tf.random.uniform((batch, *layer.input_size, kernel.shape[3]))
        out = (batch, *layer.output_size, kernel.shape[2])
        prepared = phase_conv.phase_filters(kernel, layer.input_size, layer.output_size, stride)
        native = lambda x: tf.nn.conv2d_transpose(x, kernel, out, stride, "SAME")
        ours = lambda x: phase_conv.conv2d_transpose_same(
            x, kernel, layer.output_size, stride, prepared)
    else:
        x = tf.random.uniform((batch, *layer.input_size, kernel.shape[2]))
        prepared = phase_conv.phase_filters(kernel, *layer.transposed_sizes(), stride)
        native = lambda x: tf.nn.conv2d(x, kernel, stride, "SAME")
        ours = lambda x: phase_conv.conv2d_same(x, kernel, stride, prepared)
    y = native(x)
    return layer.name, x, y, {name: (tf.function(f), input_gradient(f))
                              for name, f in (("tensorflow", native), ("ops", ours))}


def measure(layer, batch, seconds):
    name, x, y, implementations = layer_cases(layer, batch)
    gflop = common.layer_flops(layer) * batch / 1e9
    figures = {"layer": name, "input": list(x.shape[1:]), "output": list(y.shape[1:]),
               "gflop": round(gflop, 3)}
    dy = tf.random.uniform(y.shape)
    for impl, (forward, gradient) in implementations.items():
        for part, ms in (("forward", milliseconds(forward, x, seconds=seconds)),
                         ("input_grad", milliseconds(gradient, x, dy, seconds=seconds))):
            figures[f"{impl}_{part}_ms"] = round(ms, 2)
            figures[f"{impl}_{part}_gflops"] = round(gflop / ms * 1e3, 1)
    return figures


def main(argv=None):
    args = parse_args(argv)
    width = args.width or args.height
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        dcgan = model.DCGAN(ModelConfig(args.height, width, args.channels), checkpoint_dir)
    matmul = [common.matmul_gflops()]
    layers = [layer for net in (dcgan.generator, dcgan.discriminator) for layer in net.layers
              if isinstance(layer, (ops.Conv2D, ops.Deconv2D))]
    rows = [measure(layer, args.batch, args.seconds) for layer in layers]
    matmul.append(common.matmul_gflops())
    totals = {key: round(sum(row[key] for row in rows), 1) for key in rows[0]
              if key.endswith("_ms")}
    common.print_json({"height": args.height, "width": width, "channels": args.channels,
                       "batch": args.batch, "matmul_gflops": round(sum(matmul) / 2, 1),
                       "total_ms": totals, "layers": rows, **common.environment()})


if __name__ == "__main__":
    main()
