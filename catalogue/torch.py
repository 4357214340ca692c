"""torch's own losses and softmax kernels, the kit's default run: F.cross_entropy,
F.linear_cross_entropy and its chunked path, F.softmax and F.log_softmax."""

REQUIRES = ("torch",)
