from __future__ import annotations

from stemd.cli import main

main()
