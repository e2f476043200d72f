"""torch.profiler operators grouped by the kind of work their own time is: what the
profiles of transformers' prefill (hf_prefill_profile.py) and of a training step
(train_profile.py) report."""

MATRIX_PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
# Operators that only make views or dispatch to others: their own time is bookkeeping.
BOOKKEEPING = {
    "aten::matmul",
    "aten::linear",
    "aten::view",
    "aten::reshape",
    "aten::_unsafe_view",
    "aten::transpose",
    "aten::t",
    "aten::as_strided",
    "aten::slice",
    "aten::select",
    "aten::expand",
    "aten::unsqueeze",
    "aten::split_with_sizes",
    "aten::empty",
    "aten::empty_strided",
    "aten::result_type",
    "aten::scaled_dot_product_attention",
}


def kind_of_operator(name: str) -> str:
    """The kind of work an operator's own time is."""
    if name in MATRIX_PRODUCTS:
        return "matrix products"
    if name in BOOKKEEPING:
        return "views and dispatch"
    if "scaled_dot_product" in name:
        return "attention kernel"
    return "elementwise, copies, reductions"


def by_kind(operators) -> dict:
    """Seconds of own time per kind, from (name, own microseconds) pairs."""
    totals = {}
    for name, micros in operators:
        kind = kind_of_operator(name)
        totals[kind] = totals.get(kind, 0.0) + micros / 1e6
    return totals
