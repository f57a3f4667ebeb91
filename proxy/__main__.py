"""`python -m proxy` is the `shardproxy` command."""

from proxy.cli.main import main

raise SystemExit(main())
