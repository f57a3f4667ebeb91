"""`python -m proxy` is the `shardproxy` command."""

from proxy.cli import main

raise SystemExit(main())
