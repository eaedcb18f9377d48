"""Evaluation: IC-family signal metrics (``metrics``), qlib's TopK-Dropout backtest (``backtest``) and HTML/text
reports (``report``). Import the submodules directly: ``metrics`` stays free of matplotlib for the training loop."""
