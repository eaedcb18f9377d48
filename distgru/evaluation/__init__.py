"""Evaluation of predictions: qlib's TopK-Dropout backtest (``backtest``), the ``evaluate`` entry points and the
HTML/text reports (``report``). The IC-family signal metrics are at the ground floor (``distgru.metrics``), so
data, training and tuning use them without importing this package."""
