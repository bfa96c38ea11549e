"""Choosing `--parallel`: the AIMD controller behind `--parallel auto` and the `rollouts tune` sweep."""
