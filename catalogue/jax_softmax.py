"""JAX's jax.nn.softmax and jax.nn.log_softmax on the CPU (conformance.adapters.jax_softmax, under
jax.jit), judged together (one implementation of each form); float64 unsupported without x64."""

REQUIRES = ("jax",)


def pytest_conformance_impl(config):
    import jax

    from conformance.adapters import jax_softmax
    return [jax_softmax(jax.nn.softmax, form="softmax"), jax_softmax(jax.nn.log_softmax, form="log_softmax")]
