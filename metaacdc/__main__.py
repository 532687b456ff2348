"""`python -m metaacdc` is the `metaacdc` command."""

from metaacdc.cli import main

raise SystemExit(main())
