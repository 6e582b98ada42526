"""The SQLite state database and the repository functions that run against it."""
