"""``python -m canvas_engineering``."""

from canvas_engineering.cli import main

raise SystemExit(main())
