"""`python -m sbx`: the same as the `sbx` console script."""

import sys

from sbx.pipelines.cli import main

sys.exit(main())
