"""`python -m mafs_ros ...` is the `mafs` command."""

from .cli import main

raise SystemExit(main())
