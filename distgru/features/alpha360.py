"""Alpha360: qlib's 60 days of raw price/volume history (qlib-protocol §2.3), in qlib's exact column order.

For each of close, open, high, low, vwap: ``Ref($f, i)/$close`` for i = 59..1, then ``$f/$close`` (named F59..F0);
volume is divided by ``$volume+1e-12`` instead. Without ``$vwap`` in the data the VWAP block is NaN. Flat: one
day's 360 values are a [60, 6] history, which qlib's pytorch_gru reshapes (``model.input: flat``).
"""

from __future__ import annotations

from distgru.features.sets import register_feature_set

LAGS = 60
_PRICES = ("close", "open", "high", "low", "vwap")


@register_feature_set(flat=True)
def alpha360() -> list[tuple[str, str]]:
    """(name, qlib expression) for all 360 features in qlib's column order."""
    out: list[tuple[str, str]] = []
    for field, base in [*((f, "$close") for f in _PRICES), ("volume", "($volume+1e-12)")]:
        for i in range(LAGS - 1, -1, -1):
            num = f"Ref(${field}, {i})" if i else f"${field}"
            out.append((f"{field.upper()}{i}", f"{num}/{base}"))
    return out
