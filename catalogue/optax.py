"""optax's softmax_cross_entropy_with_integer_labels under jax.jit (conformance.adapters.jax_loss)."""

REQUIRES = ("optax", "jax")


def pytest_conformance_impl(config):
    import optax

    from conformance.adapters import jax_loss
    return jax_loss(optax.softmax_cross_entropy_with_integer_labels)
