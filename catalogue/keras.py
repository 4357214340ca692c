"""Keras 3 SparseCategoricalCrossentropy(from_logits=True) on its torch backend (conformance.adapters.keras_loss)."""

REQUIRES = ("keras",)


def pytest_conformance_impl(config):
    import os
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    from conformance.adapters import keras_loss
    return keras_loss(keras.losses.SparseCategoricalCrossentropy, from_logits=True)
