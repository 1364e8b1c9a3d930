"""``python -m hub_export`` runs the ``concat-embed`` command line."""

from hub_export.cli import main

raise SystemExit(main())
