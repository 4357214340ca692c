"""Forms of implementation, one module per family on one protocol (``forms.protocol``): the
logits form (torch's ``cross_entropy``), the linear form (``linear_cross_entropy``) and the
vocab-parallel form (a rank's class shard in a process group), and the softmax forms (torch's
``softmax`` and ``log_softmax``). ``of(impl)`` is the form an
implementation declares or its signature shows (``impl.Implementation.form``)."""
from __future__ import annotations

from .linear import LinearForm
from .logits import LogitsForm
from .protocol import Form, Quantity, Show
from .softmax import SoftmaxForm
from .vocab_parallel import VocabParallelForm

__all__ = ["Form", "Quantity", "Show", "FORMS", "of"]

FORMS = {form.name: form for form in (LogitsForm(), LinearForm(), VocabParallelForm(), SoftmaxForm("softmax"),
                                      SoftmaxForm("log_softmax"))}


def of(impl) -> Form:
    """The form that calls and judges ``impl``."""
    return FORMS[impl.form]
