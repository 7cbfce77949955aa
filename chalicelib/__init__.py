"""Everything the Lambda functions ship, in packages that follow a file's way through the system:
intake (what a user hands us) -> jobs (a job's life) -> generation (rows to openers) -> export,
with outbound (requests made for a user), accounts, adapters (PostgreSQL, S3, SQS) and web
beside them. Each package imports only from those below it (.importlinter, checked by make test);
settings, deps, errors and logs sit at the top level."""
