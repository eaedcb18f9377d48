"""Alpha158: qlib's 158 hand-crafted daily features (qlib-protocol §3), in qlib's exact column order.

9 k-bar features, 4 price ratios, then 29 rolling groups × windows (5, 10, 20, 30, 60). Each definition is qlib's
expression text, evaluated by :mod:`distgru.features.expr` with qlib's operator semantics.
"""

from __future__ import annotations

from distgru.features.sets import register_feature_set

WINDOWS = (5, 10, 20, 30, 60)

_KBAR = (
    ("KMID", "($close-$open)/$open"),
    ("KLEN", "($high-$low)/$open"),
    ("KMID2", "($close-$open)/($high-$low+1e-12)"),
    ("KUP", "($high-Greater($open, $close))/$open"),
    ("KUP2", "($high-Greater($open, $close))/($high-$low+1e-12)"),
    ("KLOW", "(Less($open, $close)-$low)/$open"),
    ("KLOW2", "(Less($open, $close)-$low)/($high-$low+1e-12)"),
    ("KSFT", "(2*$close-$high-$low)/$open"),
    ("KSFT2", "(2*$close-$high-$low)/($high-$low+1e-12)"),
)
_PRICE = tuple((f"{f}0", f"${f.lower()}/$close") for f in ("OPEN", "HIGH", "LOW", "VWAP"))

_UP = "Sum(Greater($close-Ref($close, 1), 0), {d})"
_DOWN = "Sum(Greater(Ref($close, 1)-$close, 0), {d})"
_MOVE = "(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)"
_VUP = "Sum(Greater($volume-Ref($volume, 1), 0), {d})"
_VDOWN = "Sum(Greater(Ref($volume, 1)-$volume, 0), {d})"
_VMOVE = "(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)"
_WV = "Abs($close/Ref($close, 1)-1)*$volume"

# (prefix, template with {d} for the window), in qlib's group order.
_ROLLING = (
    ("ROC", "Ref($close, {d})/$close"),
    ("MA", "Mean($close, {d})/$close"),
    ("STD", "Std($close, {d})/$close"),
    ("BETA", "Slope($close, {d})/$close"),
    ("RSQR", "Rsquare($close, {d})"),
    ("RESI", "Resi($close, {d})/$close"),
    ("MAX", "Max($high, {d})/$close"),
    ("MIN", "Min($low, {d})/$close"),
    ("QTLU", "Quantile($close, {d}, 0.8)/$close"),
    ("QTLD", "Quantile($close, {d}, 0.2)/$close"),
    ("RANK", "Rank($close, {d})"),
    ("RSV", "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)"),
    ("IMAX", "IdxMax($high, {d})/{d}"),
    ("IMIN", "IdxMin($low, {d})/{d}"),
    ("IMXD", "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}"),
    ("CORR", "Corr($close, Log($volume+1), {d})"),
    ("CORD", "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})"),
    ("CNTP", "Mean($close>Ref($close, 1), {d})"),
    ("CNTN", "Mean($close<Ref($close, 1), {d})"),
    ("CNTD", "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})"),
    ("SUMP", f"{_UP}/{_MOVE}"),
    ("SUMN", f"{_DOWN}/{_MOVE}"),
    ("SUMD", f"({_UP}-{_DOWN})/{_MOVE}"),
    ("VMA", "Mean($volume, {d})/($volume+1e-12)"),
    ("VSTD", "Std($volume, {d})/($volume+1e-12)"),
    ("WVMA", f"Std({_WV}, {{d}})/(Mean({_WV}, {{d}})+1e-12)"),
    ("VSUMP", f"{_VUP}/{_VMOVE}"),
    ("VSUMN", f"{_VDOWN}/{_VMOVE}"),
    ("VSUMD", f"({_VUP}-{_VDOWN})/{_VMOVE}"),
)


def group_of(name: str) -> str:
    """The family a column belongs to (KBAR, PRICE or a rolling prefix such as CORR), for progress lines."""
    if name in dict(_KBAR):
        return "KBAR"
    if name in dict(_PRICE):
        return "PRICE"
    return name.rstrip("0123456789")


@register_feature_set(group=group_of)
def alpha158() -> list[tuple[str, str]]:
    """(name, qlib expression) for all 158 features in qlib's column order."""
    rolling = [(f"{prefix}{d}", template.format(d=d)) for prefix, template in _ROLLING for d in WINDOWS]
    return [*_KBAR, *_PRICE, *rolling]
