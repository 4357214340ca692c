"""MLX's mx.softmax (MLX's default precise=False) and mlx.nn.log_softmax on the CPU
(conformance.adapters.mlx_softmax), judged together (one implementation of each form)."""

REQUIRES = ("mlx",)
# mlx.nn.log_softmax kills the process on a dim of size 1 (mlx 0.32.4, README, MLX): under xdist the
# crash is one failed check ("process crash") and the row goes on.
PROFILE = ("-n", "2")


def pytest_conformance_impl(config):
    import mlx.core as mx
    import mlx.nn

    from conformance.adapters import mlx_softmax
    return [mlx_softmax(mx.softmax, form="softmax"), mlx_softmax(mlx.nn.log_softmax, form="log_softmax")]
