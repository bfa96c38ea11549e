"""Talking to a model endpoint: the HTTP stack, one model call with its retries, reply checks, chat conversion,
credentials."""

# Reply bodies being read at once by one collector process (--max-reply-memory-bytes): here, not in bodies.py, so the
# config can name it without loading httpx for every --help.
DEFAULT_REPLY_MEMORY_BYTES = 256 << 20
