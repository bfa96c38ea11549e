"""Helpers of the integration and command-line tiers: prompt rows, JSONL files, a free port. The servers they share
(one Prefect server, the simulated model server, a local S3) are session fixtures in tests/conftest.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def math_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 3 + i, 7 + 2 * i
        rows.append(
            {
                "responses_create_params": {"input": [{"role": "user", "content": f"What is {a} + {b}?"}]},
                "expected_answer": str(a + b),
            }
        )
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_rows(run_dir: Path, folder: str) -> list[dict]:
    rows = []
    for file in sorted((run_dir / folder).glob("*.jsonl")):
        rows += read_jsonl(file)
    return rows
