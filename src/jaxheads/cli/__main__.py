"""``python -m jaxheads.cli``: the ``jaxheads`` command, for launchers that start a module (multi-host jobs)."""

import sys

from jaxheads.cli.main import main

sys.exit(main())
