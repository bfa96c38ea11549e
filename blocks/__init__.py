"""Prefect blocks: settings and secrets that hand out clients and filesystems (none are needed yet: the model key
comes from `--api-key-env`, S3 credentials from the usual AWS environment)."""
