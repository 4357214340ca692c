"""The catalogue of ``python -m conformance matrix``: one hook file per implementation (see
``conformance/matrix.py``); each row's run loads its file as the plugin ``catalogue.NAME``."""
