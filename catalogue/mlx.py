"""MLX's mlx.nn.losses.cross_entropy on the CPU (conformance.adapters.mlx_loss)."""

REQUIRES = ("mlx",)


def pytest_conformance_impl(config):
    import mlx.nn

    from conformance.adapters import mlx_loss
    return mlx_loss(mlx.nn.losses.cross_entropy)
