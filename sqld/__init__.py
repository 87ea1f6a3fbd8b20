"""sqld: SQLite served over the PostgreSQL wire protocol."""

__version__ = "0.1.0"
