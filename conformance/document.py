"""The seed document's four ways to write the loss (cross_entropy; nll_loss of log_softmax; nll_loss
of the log of softmax; the one-hot sum), as code over ``logits`` and ``target`` that a check runs
as a recorded step (``judge.snippet.Steps``) and its reproduce snippet prints, so the two never
differ."""

__all__ = ["DOCUMENT_PATHS", "document_path_code"]

# The document's four paths, in the case's dtype, as code over ``logits`` and ``target`` (the
# check evaluates the very code its reproduce snippet prints). The last two take the log of a
# probability that was rounded to the dtype (``tolerance.document_path_bound``).
_ONE_HOT_ROWS = "(-(F.one_hot(target, logits.shape[1]) * torch.log(F.softmax(logits, 1))).sum(1))"
_REDUCED = {"none": "{}", "sum": "{}.sum()", "mean": "({0}.sum() / {0}.shape[0])"}
DOCUMENT_PATHS = {
    "CrossEntropyLoss": ("F.cross_entropy(logits, target, reduction={reduction!r})", False),
    "LogSoftmax+NLLLoss": ("F.nll_loss(F.log_softmax(logits, 1), target, reduction={reduction!r})", False),
    "Softmax+log+NLLLoss": ("F.nll_loss(torch.log(F.softmax(logits, 1)), target, reduction={reduction!r})", True),
    "-(onehot*log softmax).sum()/N": ("{one_hot_rows}", True),
}


def document_path_code(path: str, reduction: str) -> str:
    """The document's ``path`` as an expression over ``logits`` and ``target`` (``torch``, ``F``)."""
    code = DOCUMENT_PATHS[path][0].format(reduction=reduction, one_hot_rows=_ONE_HOT_ROWS)
    return _REDUCED[reduction].format(code) if path.startswith("-(onehot") else code
