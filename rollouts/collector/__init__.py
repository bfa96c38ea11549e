"""What runs the rollouts of a process: its event loop, in-flight limits, failure breaker, stop signal, progress counts
and collector processes."""
