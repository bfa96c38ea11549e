"""The documentation works as written: README.md, CONTRIBUTING.md and docs/*.md.

Every command of a ```bash or ```console block is either run here or matched by an entry of NOT_RUN that says why not.
Commands run in this process, through the `rollouts` entry point (`commands.main`), in a folder holding a small run
at `runs/demo` and a NeMo Gym output folder at `gym_out/` (copies of tests/fixtures/); none may start Prefect. A
```console block shows a command after `$ ` and, below it, what it prints: the test compares the two. A `rollouts`
command that is not run is still parsed and its options validated, so a renamed or mistyped flag fails here. Besides
commands: every repository path in backticks exists, every relative link and its #anchor resolves, every ```python
block compiles, and the README keeps the test command CI runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_COMMAND = "pip install -e '.[test]' && pytest"  # the README's, run by .ci/run

# Commands of ```bash blocks run here, as written: each must exit 0 and leave these files behind (paths relative to
# the folder it runs in).
RUN: dict[str, tuple[str, ...]] = {
    "rollouts collect --help": (),
    "rollouts tune --help": (),
    "rollouts sim-server --help": (),
    "rollouts process runs/demo --objective sft --min-reward 1 --per-prompt 2 --out runs/demo/best-of-2": (
        "runs/demo/best-of-2/sft/openai.jsonl",
        "runs/demo/best-of-2/sft/trl.jsonl",
        "runs/demo/best-of-2/sft/data_card.md",
    ),
    "rollouts process runs/demo --objective rl,sft,dpo --out runs/demo/train-again": (
        "runs/demo/train-again/rl/rollouts.parquet",
        "runs/demo/train-again/sft/openai.jsonl",
        "runs/demo/train-again/dpo/trl.jsonl",
    ),
    "rollouts process gym_out/*.jsonl --objective dpo --pairing all-pairs --min-margin 0.5 --max-pairs-per-prompt 4 "
    "--max-length-ratio 1.5 --format trl --format nemo-rl --out ./gym-train": (
        "gym-train/dpo/trl.jsonl",
        "gym-train/dpo/nemo-rl.jsonl",
    ),
    "rollouts process gym_out/ --objective sft --min-reward 1 --per-prompt 2 --out ./gym-train": (
        "gym-train/sft/openai.jsonl",
    ),
    "rollouts check runs/demo": ("runs/demo/quality/verdicts.jsonl", "runs/demo/quality/summary.json"),
    "rollouts check gym_out/ --out gym-health --skip-checks identical_group --max-unhealthy-fraction 0.05": (
        "gym-health/quality/verdicts.jsonl",
        "gym-health/quality/summary.json",
    ),
    "rollouts tokens runs/agent --out runs/agent/train/tokens --on-break splice": (
        "runs/agent/train/tokens/tokens.parquet",
        "runs/agent/train/tokens/tokens_card.md",
    ),
}

# Commands not run here, by how they start, and why.
NOT_RUN: dict[tuple[str, ...], str] = {
    ("pip install",): "installs into the environment these tests run in; .ci/run runs the README's test command",
    ("pytest", "NEMO_GYM_PYTHON="): "runs the test suite this test is part of",
    ("ruff check", "ruff format", "mypy"): "lint and type checks of the whole tree, not of the docs",
    ("rollouts collect",): "collects through the Prefect flow from a model server; tests/integration/test_cli.py and "
    "tests/cli/ run the real command",
    ("rollouts tune",): "measures a model server for a minute or more; tests/integration/test_tune_auto.py runs it",
    ("rollouts sim-server", "python -m rollouts.sim "): "serves until stopped; tests/unit/test_sim_server.py starts it",
    ("rollouts tokens gym_out/*.jsonl --out s3://",): "writes to S3 with a tokenizer from /models; the same command on "
    "a run directory is run here",
    ("python bench/",): "benchmarks run for minutes and print figures",
    ("python -m tests.servers.llama serve",): "builds llama.cpp (minutes, once) and serves until stopped; the "
    "realmodel tier starts the same server (tests/realmodel/conftest.py)",
    ("rollouts demo --model-url",): "collects from a real model server for minutes; tests/realmodel/test_demo.py runs "
    "it against llama-server",
    ("prefect ", "export PREFECT_API_URL=", "PREFECT_API_URL=", "python -c", "python deployments/deploy.py"): (
        "needs a Prefect server and a worker; tests/integration/test_chain.py, test_deployments.py and test_blocks.py "
        "run these steps"
    ),
    ("rollouts server start",): "starts a long-lived Prefect server; tests/cli/test_local_server.py runs it",
    ("python3.13 -m venv", "/tmp/ngym/bin/pip", "unzip -p"): "builds NeMo Gym 0.7 in a Python 3.13 venv (minutes)",
    ("python -m venv --system-site-packages /tmp/nrl", "/tmp/nrl/bin/pip", "NEMO_RL_SRC="): "needs a checkout of "
    "NeMo RL's repository, which no registry serves",
}


@dataclass(frozen=True)
class Command:
    doc: str  # the file, relative to the repository
    line: int
    raw: str  # as written, continuation lines joined
    argv: tuple[str, ...]
    output: tuple[str, ...] | None  # a console block's lines below the command; None in a bash block

    @property
    def text(self) -> str:
        return " ".join(self.argv)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text[:100]}"


FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def blocks(path: Path) -> Iterator[tuple[str, int, str]]:
    """(language, line of the first body line, body) of each fenced block."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        yield match["lang"], text.count("\n", 0, match.start("body")) + 1, match["body"]


def logical_lines(body: str, first: int) -> Iterator[tuple[int, str, list[str]]]:
    """Shell lines with `\\` continuations and multi-line quotes joined: (line, text, words without comments)."""
    start, pending = first, ""
    for number, line in enumerate(body.splitlines(), start=first):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on on the next line
            pending += "\n"
            continue
        if words:
            yield start, pending.strip(), words
        pending = ""
    assert not pending.strip(), f"unterminated command at line {start}: {pending!r}"


def documented_commands() -> list[Command]:
    found = []
    for path in DOCS:
        doc = str(path.relative_to(ROOT))
        for lang, first, body in blocks(path):
            if lang == "bash":
                for line, raw, words in logical_lines(body, first):
                    if words[-1] == "&":  # started in the background
                        words = words[:-1]
                    found.append(Command(doc, line, raw, tuple(words), None))
            elif lang == "console":
                lines = body.splitlines()
                starts = [i for i, text in enumerate(lines) if text.startswith("$ ")]
                assert starts and starts[0] == 0, f"{doc}:{first}: a console block starts with `$ `"
                for i, end in zip(starts, [*starts[1:], len(lines)], strict=True):
                    ((_, raw, words),) = logical_lines(lines[i][2:], first + i)
                    found.append(Command(doc, first + i, raw, tuple(words), tuple(lines[i + 1 : end])))
    return found


COMMANDS = documented_commands()


def not_run_reason(command: Command) -> tuple[tuple[str, ...], str] | None:
    for prefixes, reason in NOT_RUN.items():
        if command.text.startswith(prefixes):
            return prefixes, reason
    return None


def runs_here(command: Command) -> bool:
    return command.output is not None or command.text in RUN


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder to run documented commands in: the demo run and a NeMo Gym output folder, as the docs name them."""
    shutil.copytree(ROOT / "tests" / "fixtures" / "process" / "run", tmp_path / "runs" / "demo")
    shutil.copytree(ROOT / "tests" / "fixtures" / "gym_out", tmp_path / "gym_out")
    # a run collected with --return-tokens: rollout rows that carry token ids
    (tmp_path / "runs" / "agent").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "process" / "gym.jsonl", tmp_path / "runs" / "agent" / "rollouts.jsonl")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run a documented command in this process: its exit code and what it printed (stdout, then stderr)."""
    from commands import main, server

    def no_prefect(*args, **kwargs):
        raise AssertionError(f"a documented command run by this test tried to start Prefect: {' '.join(argv)}")

    monkeypatch.setattr(server, "use_prefect_server", no_prefect)
    environ = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                assert argv[0] == "rollouts", f"only `rollouts` commands run here: give {argv[0]!r} a NOT_RUN reason"
                code = main(list(argv[1:]))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(environ)  # `collect` sets Prefect's defaults in the environment
    return int(code or 0), out.getvalue() + err.getvalue()


def parse_only(argv: list[str]) -> None:
    """Parse a `rollouts` (or `python -m rollouts.sim`) command and validate its options, running nothing."""
    if argv[:1] == ["rollouts"] and argv[1:2] != ["sim-server"]:
        from commands import build_parser
        from commands.collect import collect_config
        from commands.process import build_command

        args = build_parser().parse_args(argv[1:])
        if args.command == "collect":
            collect_config(args)
        elif args.command == "process":
            build_command(args)
        return
    from rollouts.sim.server import SimConfig, build_parser

    options = argv[2:] if argv[0] == "rollouts" else argv[3:]
    SimConfig(**vars(build_parser().parse_args(options)))


def test_every_command_is_run_or_not_run_for_a_reason() -> None:
    assert len(COMMANDS) > 40 and {c.doc for c in COMMANDS} >= {"README.md", "CONTRIBUTING.md", "docs/collect.md"}
    unclassified = [str(c) for c in COMMANDS if not runs_here(c) and not_run_reason(c) is None]
    assert not unclassified, "run these in test_docs.RUN or give a reason in NOT_RUN:\n" + "\n".join(unclassified)
    texts = {c.text for c in COMMANDS}
    assert not (missing := set(RUN) - texts), f"RUN names commands no longer in the docs: {missing}"
    used = {reason[0] for c in COMMANDS if not runs_here(c) and (reason := not_run_reason(c))}
    assert not (stale := set(NOT_RUN) - used), f"NOT_RUN entries that match no command: {stale}"


@pytest.mark.parametrize("command", [c for c in COMMANDS if runs_here(c)], ids=str)
def test_documented_command_runs(command: Command, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, printed = run(command.argv, monkeypatch)
    if command.output is not None:
        shown = [line.rstrip() for line in command.output if line.strip()]
        assert [line.rstrip() for line in printed.splitlines() if line.strip()] == shown
        assert code == (2 if shown and shown[0].startswith("error:") else 0)
        return
    assert code == 0, printed[-2000:]
    if command.text.endswith("--help"):
        assert printed.startswith("usage: "), printed[:200]
    for path in RUN[command.text]:
        assert (workspace / path).is_file(), f"{command}: no {path}"


def _parsed_commands() -> list[tuple[Command, list[str]]]:
    """Every `rollouts` / `python -m rollouts.sim` command in the docs that is not run, with its words."""
    found = []
    for command in COMMANDS:
        if runs_here(command):
            continue
        segment: list[str] = []
        for word in [*command.argv, "&&"]:
            if word in ("&&", "||", "|", ";"):
                if segment[:1] == ["rollouts"] or segment[:3] == ["python", "-m", "rollouts.sim"]:
                    found.append((command, segment))
                segment = []
            else:
                segment.append(word)
    return found


@pytest.mark.parametrize(("command", "argv"), [pytest.param(c, a, id=str(c)) for c, a in _parsed_commands()])
def test_documented_command_not_run_still_parses(command: Command, argv: list[str]) -> None:
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            parse_only(argv)
        except SystemExit as exc:
            pytest.fail(f"{command}: {err.getvalue().strip()} (exit {exc.code})")


def test_the_readme_keeps_the_test_command_ci_runs() -> None:
    readme = [c.raw for c in COMMANDS if c.doc == "README.md" and c.output is None]
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


REPO_PATH = re.compile(r"`((?:rollouts|commands|flows|tasks|blocks|deployments|bench|tests|docs|\.ci)/[^`\s]*)`")
LINK = re.compile(r"\]\((?!https?://)([^)#\s]*)(?:#([^)\s]+))?\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    text = FENCE.sub("", path.read_text())
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_links_resolve(path: Path) -> None:
    text = path.read_text()
    prose = FENCE.sub("", text)
    missing = [
        p for p in REPO_PATH.findall(prose) if not any(c in p for c in "<*{") and not (ROOT / p.rstrip(".,:;")).exists()
    ]
    assert not missing, f"{path.name} names paths that do not exist: {missing}"
    broken = []
    for target, anchor in LINK.findall(re.sub(r"`[^`\n]*`", "", prose)):
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{path.name} links to what does not exist: {broken}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(path: Path) -> None:
    for lang, line, body in blocks(path):
        if lang == "python":
            compile(body, f"{path.name}:{line}", "exec")
