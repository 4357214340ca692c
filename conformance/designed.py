"""The problems the rows of a family's covering design make (``conformance.design`` chooses the
rows): each row's width class, logit distribution, target placement, features, layout, dtype,
reduction and variants turned into a recipe, and the parameters of a design-driven check."""
from __future__ import annotations

import pytest
import torch

from . import design
from .cases import Problem, from_recipe, linear_problem_case, logits_lines, problem
from .design import WIDTHS
from .reference import Variant
from .softmax import SoftmaxVariant

__all__ = ["design_params", "logits_problem", "softmax_arguments", "linear_problem"]

_PLACEMENTS = {  # where the target sits in its row (a factor of the covering design)
    "small": "target = torch.where(z < z.median(1, keepdim=True).values, torch.rand(z.shape, generator=g), -1.0)"
             ".argmax(1)",
    "max": "target = z.argmax(1)",
    "far": "target = z.argmin(1)",
}
_FEATURES = {"plain": (), "weighted": ("weight",), "ignored": ("ignore_index",), "smoothed": ("label_smoothing",),
             "all": ("weight", "ignore_index", "label_smoothing")}


def _needs(family: str, row: dict) -> list:
    """The features a row of ``family``'s design needs (``feature`` marks): its loss options and
    variants, a softmax's dim other than the last and strided view (a reduction's is the
    check's ``reduction`` parameter's, ``session.item_features``)."""
    needs = list(_FEATURES.get(row.get("features"), ()))
    needs += [name for name in design.VARIANT_FACTORS.get(family, ()) if row.get(name, "off") != "off"]
    return needs + ["any_dim"] * (row.get("dim") == "not_last") + ["noncontiguous"] * (family == "softmax"
                                                                                        and row["layout"] == "strided")


def design_params(family: str, *, deep: bool, seed: int) -> tuple:
    """Names and parameters of a design-driven check: ``dtype``, ``reduction`` where the family
    has one, and ``row`` (``(index, levels)``), the rows of the family's covering design (strength 3
    in the deep run, 2 otherwise), each marked with the features it needs."""
    rows = design.design(family, design.strength(deep), seed).rows
    reduced = "reduction" in design.FACTORS[family]
    params = []
    for index, row in enumerate(rows):
        needs = _needs(family, row)
        label = "-".join(level if name in ("width", "distribution", "features") else f"{name}={level}"
                         for name, level in row.items() if name not in ("dtype", "reduction")
                         and level not in ("off", "contiguous"))
        reduction = (row["reduction"],) if reduced else ()
        params.append(pytest.param(getattr(torch, row["dtype"]), *reduction, (index, row),
                                   id="-".join([str(index), row["dtype"], *reduction, label]),
                                   marks=[pytest.mark.feature(*needs)] if needs else []))
    return "dtype,reduction,row" if reduced else "dtype,row", params


def _described(row: dict) -> str:
    return "design: " + ", ".join(f"{name}={level}" for name, level in row.items() if name not in ("dtype",
                                                                                                  "reduction"))


def logits_problem(row: dict, index: int, device: str, seed: int) -> Problem:
    """The problem of one row of a covering design (``conformance.design``): its width class,
    logit distribution, target placement, features, layout, dtype, reduction and variants."""
    n, c = WIDTHS[row["width"]]
    features = _FEATURES[row["features"]]
    lines = [f"g = torch.Generator().manual_seed({seed * 1000 + index})",
             *logits_lines(row["distribution"], n, c), _PLACEMENTS[row["placement"]]]
    if "ignore_index" in features:
        lines.append("target[::3] = -100")
    if "weight" in features:
        lines.append(f"weight = (torch.rand({c}, dtype=torch.float64, generator=g) + 0.25).to(torch.{row['dtype']})")
    lines.append(f"logits = z.to(torch.{row['dtype']})")
    if row.get("layout") == "strided":
        lines.append(f"logits = torch.zeros({n}, {2 * c}, dtype=logits.dtype)[:, ::2].copy_(logits)  # every 2nd")
    variant = Variant(logit_scale=float(row.get("logit_scale", "off").replace("off", "1.0")),
                      softcap=None if row.get("softcap", "off") == "off" else float(row["softcap"]),
                      z_loss=float(row.get("z_loss", "off").replace("off", "0.0")))
    case = from_recipe(_described(row), "\n".join(lines), device)
    return problem(case, reduction=row["reduction"], label_smoothing=0.1 * ("label_smoothing" in features),
                   variant=variant)


def softmax_arguments(row: dict, index: int, seed: int) -> dict:
    """The arguments of ``forms.softmax.softmax_problem`` for one row of a softmax design: rows of
    its width class drawn from its distribution, along the last dim or (``not_last``) the first
    of their transpose, fed contiguous or as every second element of a wider tensor, with the
    row's upstream gradient kind and variants (a random mask drops about 30 % of the entries)."""
    n, c = design.SOFTMAX_WIDTHS[row["width"]]
    lines = [f"g = torch.Generator().manual_seed({seed * 1000 + index})", *logits_lines(row["distribution"], n, c),
             f"x = z{'.t().contiguous()' * (row.get('dim') == 'not_last')}.to(torch.{row['dtype']})"]
    if row.get("layout") == "strided":
        lines.append("x = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)[..., ::2].copy_(x)  # every 2nd")
    if row.get("mask", "off") != "off":
        lines.append("mask = torch.rand(x.shape, generator=g) > 0.3")
    variant = SoftmaxVariant(scale=float(row.get("scale", "off").replace("off", "1.0")),
                             softcap=None if row.get("softcap", "off") == "off" else float(row["softcap"]))
    return dict(family=_described(row), recipe="\n".join(lines), dim=0 if row.get("dim") == "not_last" else -1,
                upstream=row.get("upstream", "random"), variant=variant)


def linear_problem(row: dict, index: int, device: str, seed: int, *, bias: bool) -> Problem:
    """The problem of one row of the linear design: its sizes, dtype, hidden-state distribution,
    loss features and reduction, biased where the row and the implementation (``bias``) take one."""
    features = _FEATURES[row["features"]]
    n, h, v = (design.LINEAR_SIZES[name][row[name]] for name in ("rows", "hidden", "vocab"))
    case = linear_problem_case(n, h, v, getattr(torch, row["dtype"]), device, seed=seed * 1000 + index,
                               family=_described(row), bias=bias and row["bias"] == "on",
                               positive=row["distribution"] == "positive",
                               confident=row["distribution"] == "confident", weight="weight" in features,
                               ignored="ignore_index" in features)
    return problem(case, reduction=row["reduction"], label_smoothing=0.1 * ("label_smoothing" in features))
