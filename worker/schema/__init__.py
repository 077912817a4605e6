"""The managed schema read from a database: a canonical record, its fingerprint, and the
differences between two of them (shape.py); one reader per backend."""
