"""``python -m fedml`` runs the ``fedml`` command line."""

from fedml.cli import main

raise SystemExit(main())
