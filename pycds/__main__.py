"""python -m pycds: the pycds-dump command line (see pycds.cli)."""

from pycds.cli import main

raise SystemExit(main())
