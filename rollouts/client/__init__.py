"""Talking to a model endpoint: the HTTP stack, one model call with its retries, reply checks, chat conversion,
credentials."""
