"""``python -m resync_hierarchy`` runs the command line."""

from resync_hierarchy.cli import main

raise SystemExit(main())
