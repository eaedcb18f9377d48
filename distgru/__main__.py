"""``python -m distgru ...``: the same command line as the ``distgru`` script, for nodes where only the working
directory was uploaded (``ray job submit --working-dir .``) and no console script exists."""

import sys

from distgru.cli import main

sys.exit(main())
