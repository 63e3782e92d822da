"""The benchmarks' PostgreSQL server: localcloud/postgres.py (the Celery deployment uses it too)."""

from __future__ import annotations

import sys

from localcloud.postgres import PostgresError, Server, install, main, server

__all__ = ["PostgresError", "Server", "install", "main", "server"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
