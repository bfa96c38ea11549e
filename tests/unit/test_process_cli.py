"""`rollouts process` on the command line: outputs, several objectives at once, clear errors and exit codes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from commands.process import add_process_parser, build_command, main

FIXTURES = Path(__file__).parents[1] / "fixtures" / "process"
GYM = str(FIXTURES / "gym.jsonl")


def test_several_objectives_in_one_go(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            GYM,
            "--objective",
            "rl,sft",
            "--objective",
            "dpo",
            "--out",
            str(tmp_path),
            "--format",
            "dpo:nemo-rl",
            "--format",
            "jsonl",
        ]
    )
    assert code == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "dpo/data_card.json", "dpo/data_card.md", "dpo/nemo-rl.jsonl",
        "rl/data_card.json", "rl/data_card.md", "rl/rollouts.jsonl",
        "sft/data_card.json", "sft/data_card.md", "sft/openai.jsonl", "sft/trl.jsonl",
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert f"dpo/nemo-rl: {tmp_path}/dpo/nemo-rl.jsonl (1 rows)" in out  # the tool-call pair: not for NeMo RL
    assert json.loads((tmp_path / "sft" / "data_card.json").read_text())["rows_out"] == 2  # reward >= 1.0 by default


def test_options_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_process_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["process", GYM, "--objective", "dpo", "--out", "x", "--pairing", "all-pairs", "--min-margin", "0.5",
         "--max-pairs-per-prompt", "3", "--max-length-ratio", "2", "--keep-mean-between", "0.1", "0.9",
         "--skip-bad-rows", "--min-reward", "0.5", "--per-prompt", "2", "--keep-duplicates", "--top-k", "3"]
    )  # fmt: skip
    (config,) = build_command(args).configs()
    assert (config.objective, config.pairing, config.min_margin, config.max_pairs_per_prompt) == (
        "dpo",
        "all-pairs",
        0.5,
        3,
    )
    assert (config.max_length_ratio, config.keep_mean_between, config.skip_bad_rows) == (2.0, (0.1, 0.9), True)
    assert (config.min_reward, config.per_prompt, config.drop_duplicates, config.top_k) == (0.5, 2, False, 3)
    assert config.output_formats == ("trl", "openai")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([str(FIXTURES / "bad.jsonl"), "--objective", "rl"], 1, "bad.jsonl:3: missing reward"),
        (["nope.jsonl", "--objective", "rl"], 1, "nope.jsonl: no such file"),
        ([GYM, "--objective", "ppo"], 2, "unknown objective 'ppo'"),
        ([GYM, "--objective", "rl", "--format", "openai"], 2, "--format openai: not a format of rl"),
        (
            [GYM, "--objective", "sft", "--per-prompt", "0"],
            2,
            "--per-prompt: Input should be greater than or equal to 1",
        ),
        ([GYM, "--objective", "rl", "--keep-mean-between", "0.9", "0.1"], 2, "low 0.9 > high 0.1"),
    ],
)
def test_user_errors_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_skip_bad_rows_reports_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the two readable rows score 0, under SFT's --min-reward: nothing is written, and that is an error (exit 1)
    assert main([str(FIXTURES / "bad.jsonl"), "--objective", "sft", "--out", str(tmp_path), "--skip-bad-rows"]) == 1
    assert "error: sft: nothing written: every rollout was dropped by the rules" in capsys.readouterr().err
    card = json.loads((tmp_path / "sft" / "data_card.json").read_text())
    assert card["bad_rows"]["count"] == 4 and card["rows_read"] == 6
    assert "## Bad rows" in (tmp_path / "sft" / "data_card.md").read_text()


def test_python_dash_m(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commands", "process", GYM, "--objective", "rl", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rl" / "rollouts.parquet").exists()


def test_sft_never_takes_a_wrong_answer_without_asking(tmp_path: Path) -> None:
    """`process` and `collect` share min_reward's default (1.0): reward-0 rollouts enter SFT only with --min-reward."""
    assert main([GYM, "--objective", "sft", "--per-prompt", "9", "--out", str(tmp_path / "a")]) == 0
    card = json.loads((tmp_path / "a" / "sft" / "data_card.json").read_text())
    assert card["reward_after"]["min"] == 1.0
    assert (
        main([GYM, "--objective", "sft", "--per-prompt", "9", "--min-reward", "none", "--out", str(tmp_path / "b")])
        == 0
    )
    card = json.loads((tmp_path / "b" / "sft" / "data_card.json").read_text())
    assert card["reward_after"]["min"] == 0.0
