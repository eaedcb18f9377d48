"""qlib's TopK-Dropout backtest (TopkDropoutStrategy + SimulatorExecutor + Exchange, daily, close-price deals).

Each trading day T of [start, end]:

1. Signal: the scores dated on the calendar day before T (qlib's ``get_step_time(step, shift=1)``); a day with
   no scores makes no trades. Rank the held names by score (unscored holdings last) as ``last``; ``today`` = the
   best ``n_drop + topk - len(last)`` scored names not held; ``sell`` = the holdings among the bottom ``n_drop`` of
   ``last ∪ today`` ranked together; ``buy`` = the first ``len(sell) + topk - len(last)`` of ``today``. Both slices
   keep Python's slicing, so a negative count drops names from the end exactly as qlib's lists do.
2. Tradability (qlib's default ``forbid_all_trade_at_limit=True``): a name is untradable on T when it is suspended
   (no bar: close NaN; with ``block_zero_volume`` also a zero-volume bar) or at either price limit,
   ``change >= limit_threshold`` (limit-up) or ``change <= -limit_threshold`` (limit-down), the same inclusive
   comparisons as qlib's ``Exchange._update_limit``. So a limit-up holding cannot be sold and a limit-down
   candidate cannot be bought either. Untradable planned sells are kept; untradable planned buys leave their slot
   empty (no substitute) but still count in the cash split.
3. Sells (holding order): the whole position at close T; cost ``max(value × close_cost, min_cost)``.
4. Buys (score order): each gets ``(cash after sells) × risk_degree / len(buy)`` of value; shares =
   value / close, rounded down to ``trade_unit`` raw shares through ``factor`` (``(amount × factor + 0.1) // unit
   × unit / factor``). Rounding is switched off for the whole run when some bar in the window has a close but no
   factor (or the panel has no factor), as qlib's ``trade_w_adj_price``. Cost ``max(value × open_cost,
   min_cost)``; an order the cash cannot cover is shrunk as qlib's Exchange does; a zero-share order is no trade.
5. Close: holdings are valued at close T; a suspended holding keeps its last price.

Report, one row per day (qlib's portfolio report, ``PortfolioMetrics``; V = account value = stock value + cash):

- ``account`` = V_T; ``value`` = stock value at close T; ``cash``; ``n_holdings`` after the day's trades.
- ``return`` = (V_T − V_{T−1} + C_T) / V_{T−1}, the return **before** costs (qlib adds the day's cost back:
  ``(now_earning + now_cost) / last_account_value``); V_{T−1} is the initial account on the first day.
- ``cost`` = C_T / V_{T−1}, C_T the sum of the day's trade costs; ``turnover`` = (sum of the day's traded value,
  buys and sells) / V_{T−1}.
- ``bench`` = benchmark close_T / close_{T−1} − 1 on the panel calendar, NaN → 0 (qlib's ``$close/Ref($close,1)-1``
  with ``fillna(0)``, computed in float32 as qlib's engine does); 0 throughout when the panel has no benchmark.

So ``return − cost`` is the account's net daily return and ``risk_analysis`` takes ``return − bench − cost``
(qlib's ``excess_return_with_cost``).

Ties and order: score ties and unscored holdings are ranked in the panel's instrument order (alphabetical from
the loaders), as qlib's alphabetical ``Index.union`` leaves NaNs; qlib's quicksort leaves exact score ties
unspecified. Known departures: ``n_drop = 0`` means no drops (qlib's ``list[-0:]`` would sell every holding);
NaN scores count as not predicted; a name scored but absent from the panel can take a buy slot but never trades
(qlib: untradable outside its quote).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from distgru.config.schema import BacktestConfig
from distgru.data.panel import BarPanel

TRADING_DAYS = 238
"""qlib's daily annualisation scaler (``_freq_scaler`` for 'day'): the cn market profile's; other markets pass
their own (``backtest.trading_days``, from ``market.trading_days``; us 252)."""

REPORT_COLUMNS = ("account", "return", "bench", "cost", "turnover", "value", "cash", "n_holdings")


@dataclass(frozen=True)
class BacktestResult:
    report: pd.DataFrame
    """Daily report indexed by ``date`` with ``REPORT_COLUMNS`` (see the module docstring)."""
    positions: dict[pd.Timestamp, dict[str, float]]
    """End-of-day holdings: instrument → amount in adjusted shares (raw shares = amount × factor)."""
    trades: pd.DataFrame
    """Executed deals: date, instrument, side ('buy'/'sell'), amount, price, value, cost."""


def _score_matrix(scores: pd.Series | pd.DataFrame, calendar: pd.DatetimeIndex,
                  instruments: list[str]) -> tuple[np.ndarray, list[str]]:
    """Scores as float64 [D, M] on the calendar; columns = the panel's instruments, then scored ones it lacks."""
    if isinstance(scores, pd.DataFrame):
        frame = scores if "datetime" in scores.columns else scores.reset_index()
    else:
        frame = scores.rename("score").reset_index()
    if not {"datetime", "instrument", "score"} <= set(frame.columns):
        raise ValueError(f"scores need datetime, instrument, score; have {list(frame.columns)}")
    # Factorize first: per-row lookups on ~10^6 (arrow-backed) strings cost seconds, on the uniques nothing.
    inst_code, inst_unique = pd.factorize(frame["instrument"])
    day_code, day_unique = pd.factorize(frame["datetime"])
    extra = sorted(set(inst_unique) - set(instruments))
    names = [*instruments, *extra]
    column = pd.Index(names).get_indexer(inst_unique)[inst_code]
    day = calendar.get_indexer(pd.DatetimeIndex(day_unique))[day_code]
    keep = day >= 0  # scores dated off the trading calendar can never be traded on
    matrix = np.full((len(calendar), len(names)), np.nan)
    matrix[day[keep], column[keep]] = frame["score"].to_numpy(np.float64)[keep]
    return matrix, names


def _padded(panel: BarPanel, name: str, width: int) -> np.ndarray:
    """A panel field as float64 [M, D], NaN rows for the scored names the panel lacks."""
    values = panel.field(name).astype(np.float64)
    return np.vstack([values, np.full((width - len(values), values.shape[1]), np.nan)])


def _change(close: np.ndarray) -> np.ndarray:
    """close_t / close_{t−1} − 1 for panels without a ``change`` field (NaN after a missing bar)."""
    change = np.full_like(close, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        change[:, 1:] = close[:, 1:] / close[:, :-1] - 1.0
    return change


class _Book:
    """Cash, holdings and the day's accumulated cost/turnover, with qlib's Exchange deal rules."""

    def __init__(self, cfg: BacktestConfig, round_lots: bool) -> None:
        self.cfg, self.round_lots = cfg, round_lots
        self.cash = float(cfg.account)
        self.amount: dict[int, float] = {}  # insertion order = qlib's position order
        self.price: dict[int, float] = {}
        self.cost = self.turnover = 0.0
        self.deals: list[tuple[int, str, float, float, float, float]] = []

    def round(self, amount: float, factor: float) -> float:
        if not self.round_lots:
            return amount
        unit = self.cfg.trade_unit
        # The +0.1 share guards against float error just below a lot boundary, as in qlib.
        return (amount * factor + 0.1) // unit * unit / factor

    def _fee(self, value: float, rate: float) -> float:
        return max(value * rate, self.cfg.min_cost)

    def _record(self, i: int, side: str, amount: float, price: float, value: float, cost: float) -> None:
        self.cost += cost
        self.turnover += value
        self.deals.append((i, side, amount, price, value, cost))

    def sell(self, i: int, price: float) -> None:
        """Sell the whole holding (qlib never rounds a full sell to lots)."""
        amount = self.amount[i]
        value = amount * price
        if value <= 1e-5 or self.cash + value < self._fee(value, self.cfg.close_cost):
            return
        cost = self._fee(value, self.cfg.close_cost)
        del self.amount[i], self.price[i]
        self.cash += value - cost
        self._record(i, "sell", amount, price, value, cost)

    def buy(self, i: int, amount: float, price: float, factor: float) -> None:
        value = amount * price
        rate = self.cfg.open_cost
        if self.cash < self._fee(value, rate):
            return
        if self.cash < value + self._fee(value, rate):
            # Largest amount the cash covers including the fee; the fee is the rate above min_cost / rate.
            # (rate 0: no fee to cover, so only the cash bounds the amount.)
            if rate == 0 or self.cash >= self.cfg.min_cost / rate + self.cfg.min_cost:
                affordable = self.cash / (1 + rate) / price
            else:
                affordable = (self.cash - self.cfg.min_cost) / price
            amount = self.round(min(affordable, amount), factor)
            value = amount * price
        if value <= 1e-5:
            return
        cost = self._fee(value, rate)
        self.amount[i], self.price[i] = amount, price
        self.cash -= value + cost
        self._record(i, "buy", amount, price, value, cost)


def _ranked(names: list[int], row: np.ndarray) -> list[int]:
    """Names by descending score, unscored (NaN) last, ties in instrument order: qlib sorts the alphabetical
    ``Index.union`` with NaNs kept in that order at the end (ties among scores are unspecified there)."""
    idx = np.asarray(names, dtype=np.int64)
    score = row[idx]
    unscored = np.isnan(score)
    return idx[np.lexsort((idx, np.where(unscored, 0.0, -score), unscored))].tolist()


def run_backtest(scores: pd.Series | pd.DataFrame, panel: BarPanel, cfg: BacktestConfig | None = None,
                 start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None) -> BacktestResult:
    """TopK-Dropout backtest of daily ``scores`` on ``panel`` between ``start`` and ``end`` (inclusive).

    ``scores``: a Series on a ``(datetime, instrument)`` MultiIndex (qlib's pred.pkl) or a frame with
    ``datetime, instrument, score`` columns (or that index and a ``score`` column). ``start``/``end`` default to
    the first and last scored day, so the first day trades nothing (its signal would be the day before).
    """
    cfg = cfg or BacktestConfig()
    score, names = _score_matrix(scores, panel.calendar, list(panel.instruments))
    scored_days = np.flatnonzero(~np.isnan(score).all(axis=1))
    if not len(scored_days):
        raise ValueError("no scores fall on the panel's calendar")
    cal = panel.calendar
    t0 = int(scored_days[0]) if start is None else int(cal.searchsorted(pd.Timestamp(start), "left"))
    t1 = int(scored_days[-1]) if end is None else int(cal.searchsorted(pd.Timestamp(end), "right")) - 1
    if t1 < t0:
        raise ValueError(f"empty backtest window {start}..{end} on the panel calendar")

    width = len(names)
    close = _padded(panel, "close", width)
    change = _padded(panel, "change", width) if "change" in panel.fields else _change(close)
    suspended = np.isnan(close)
    if cfg.block_zero_volume:
        suspended |= _padded(panel, "volume", width) == 0
    # NaN change compares False: no limit known, so no block (as qlib's ge/le).
    untradable = suspended | (change >= cfg.limit_threshold) | (change <= -cfg.limit_threshold)
    if "factor" in panel.fields:
        factor = _padded(panel, "factor", width)
        window = slice(t0, t1 + 1)
        round_lots = not (np.isnan(factor[:, window]) & ~np.isnan(close[:, window])).any()
    else:
        factor, round_lots = np.full_like(close, np.nan), False

    bench = np.zeros(len(cal))
    if panel.benchmark is not None:
        # In float32, as qlib's expression engine evaluates $close/Ref($close,1)-1 on the float32 bins: bit-equal
        # to qlib's report (float64 arithmetic differs by up to 6e-8 a day on the CSI300 index).
        index_close = np.asarray(panel.benchmark["close"], dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            bench[1:] = np.nan_to_num(index_close[1:] / index_close[:-1] - np.float32(1.0), nan=0.0)

    book = _Book(cfg, round_lots)
    rows: list[tuple[float, ...]] = []
    positions: dict[pd.Timestamp, dict[str, float]] = {}
    trade_rows: list[tuple] = []
    last_account = float(cfg.account)
    for t in range(t0, t1 + 1):
        book.cost = book.turnover = 0.0
        signal = score[t - 1] if t > 0 else None
        if signal is not None and not np.isnan(signal).all():
            _trade_day(book, cfg, signal, close[:, t], factor[:, t], untradable[:, t])
        for i in book.amount:
            if not np.isnan(close[i, t]):
                book.price[i] = close[i, t]
        stock_value = sum(book.amount[i] * book.price[i] for i in book.amount)
        account = stock_value + book.cash
        rows.append(((account - last_account + book.cost) / last_account, book.cost / last_account,
                     book.turnover / last_account, account, stock_value, book.cash, len(book.amount)))
        last_account = account
        day = cal[t]
        positions[day] = {names[i]: a for i, a in book.amount.items()}
        trade_rows.extend((day, names[i], *deal) for i, *deal in book.deals)
        book.deals.clear()

    ret, cost, turnover, account, value, cash, held = (np.array(c) for c in zip(*rows, strict=True))
    report = pd.DataFrame({"account": account, "return": ret, "bench": bench[t0:t1 + 1], "cost": cost,
                           "turnover": turnover, "value": value, "cash": cash, "n_holdings": held.astype(int)},
                          index=pd.DatetimeIndex(cal[t0:t1 + 1], name="date"))
    trades = pd.DataFrame(trade_rows, columns=["date", "instrument", "side", "amount", "price", "value", "cost"])
    return BacktestResult(report=report, positions=positions, trades=trades)


def _trade_day(book: _Book, cfg: BacktestConfig, signal: np.ndarray, close: np.ndarray, factor: np.ndarray,
               untradable: np.ndarray) -> None:
    """One day of TopkDropoutStrategy decisions executed at close (steps 1–4 of the module docstring)."""
    held = list(book.amount)
    last = _ranked(held, signal)
    candidates = np.flatnonzero(~np.isnan(signal))
    candidates = candidates[~np.isin(candidates, held)]
    candidates = candidates[np.argsort(-signal[candidates], kind="stable")].tolist()
    today = candidates[: cfg.n_drop + cfg.topk - len(last)]
    combined = _ranked(last + today, signal)
    sell = set(combined[max(0, len(combined) - cfg.n_drop):]) & set(held)
    buy = today[: len(sell) + cfg.topk - len(last)]

    for i in held:
        if i in sell and not untradable[i]:
            book.sell(i, close[i])
    # Split over the whole buy list, untradable names included: their share stays in cash (qlib).
    value = book.cash * cfg.risk_degree / len(buy) if buy else 0.0
    for i in buy:
        if untradable[i]:
            continue
        book.buy(i, book.round(value / close[i], factor[i]), close[i], factor[i])


def risk_analysis(r: pd.Series, n: int = TRADING_DAYS) -> dict[str, float]:
    """qlib's ``risk_analysis`` in mode 'sum': mean, std (ddof=1), annualized_return = mean × n,
    information_ratio = mean / std × √n, max_drawdown = min(cumsum − running max of cumsum) (arithmetic)."""
    mean, std = float(r.mean()), float(r.std(ddof=1))
    cumulative = r.cumsum()
    return {
        "mean": mean,
        "std": std,
        "annualized_return": mean * n,
        "information_ratio": mean / std * math.sqrt(n) if std else math.nan,
        "max_drawdown": float((cumulative - cumulative.cummax()).min()),
    }


def excess_returns(report: pd.DataFrame) -> pd.DataFrame:
    """qlib's two analysed series: ``excess_return_without_cost`` = return − bench and
    ``excess_return_with_cost`` = return − bench − cost."""
    without = report["return"] - report["bench"]
    return pd.DataFrame({"excess_return_without_cost": without,
                         "excess_return_with_cost": without - report["cost"]})


def portfolio_metrics(report: pd.DataFrame, trading_days: int = TRADING_DAYS) -> dict[str, dict[str, float]]:
    """``risk_analysis`` of both excess-return series (the benchmark tables use ``excess_return_with_cost``),
    annualised over ``trading_days`` a year (the market's; qlib's 238 by default)."""
    return {name: risk_analysis(series, trading_days) for name, series in excess_returns(report).items()}
