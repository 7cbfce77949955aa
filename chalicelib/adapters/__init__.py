"""Adapters: one module per external system (PostgreSQL, S3, SQS) and their health checks.
No business rules here, and nothing of ours but settings, errors and logs."""
