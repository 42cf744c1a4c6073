"""``python -m canvas_engineering``."""

from canvas_engineering.cli.commands import main

raise SystemExit(main())
