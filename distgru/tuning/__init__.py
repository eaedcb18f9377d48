"""Ray Tune over distgru training configs: ``distgru tune`` (space, runner, trials, records, results, report) and
``distgru train --seeds`` (seeds), which runs one trial per seed through the same machinery."""
