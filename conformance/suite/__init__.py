"""The conformance suite: one module per family of identities, read like the seed document."""
