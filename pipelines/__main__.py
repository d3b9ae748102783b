"""``python -m pipelines VERB ...``: the ``gendet`` command (``pipelines.cli``)."""

import sys

from pipelines.cli import main

sys.exit(main())
