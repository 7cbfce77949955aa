"""Intake: what a user hands us, checked before anything is stored. The HTTP body (multipart or
raw), the CSV (encoding, dialect, header, URL column, rows) and each URL. Pure: no I/O."""
