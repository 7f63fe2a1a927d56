"""Command line: run, check, separate, status, retry, dismiss, models, install-service.

`app` holds the parser and `main` (the only `sys.exit`); each other module holds
a family of commands:

- `daemon`: run, check, install-service;
- `separate`: separate;
- `jobs`: status, retry, dismiss;
- `models`: models list, models fetch, models export;
- `common`: the config a command runs on, the model cache, the ledger.
"""

from stemd.cli.app import main

__all__ = ["main"]
