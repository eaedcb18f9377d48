"""One terminal line per trial epoch, for runs whose live Tune table is off (``--seeds``) or too slow to follow."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from distgru.training.progress import epoch_summary


class TrialEpochLines(Callback):
    """Prints each trial's epoch rows as Tune receives them (the driver's process, so no worker log noise)."""

    def __init__(self, n_epochs: int, keys: list[str]) -> None:
        self.n_epochs, self.keys = n_epochs, keys

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if "epoch" not in result:
            return
        params = " ".join(f"{k.split('.')[-1]}={trial.config.get(k)}" for k in self.keys)
        print(f"trial {trial.trial_id} {params}  {epoch_summary(result, self.n_epochs)}  "
              f"patience {int(result['patience'])}" + ("  (stopped early)" if result.get("stopped_early") else ""),
              flush=True)
