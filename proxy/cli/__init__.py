"""The command line: serve, check, plan, backfill, verify, cleanup, status, acl, and the
embedded default (`serve --local`)."""
