"""Ray Tune over distgru training configs (``distgru tune``): space, trials, results and report."""
