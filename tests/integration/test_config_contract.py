"""One declaration per option: every CollectConfig field is a flag in --help, a typed, described field of the flow's
parameter schema (the Prefect UI's run form) and a key of the run's manifest; a field added to a section appears in
all three with nothing else written. `rollouts tune` and `rollouts tokens` follow the same contract from TuneConfig and
TokensConfig, and a flag two commands share is one field, with one help text and one default."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel, Field, create_model

import commands.tokens
import commands.tune
from commands import build_parser
from commands.options import add_model_options, build
from flows.collect import collect_rollouts
from flows.sections import collect_from_sections
from rollouts.config import CollectConfig, SamplingConfig
from rollouts.errors import ConfigError
from rollouts.options import Cli, marker
from rollouts.run import RunRef, write_manifest
from rollouts.storage import Store
from rollouts.tokens.config import TokensConfig
from rollouts.tune.sweep import TuneConfig


def leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], typing.Any]]:
    found = []
    for name, field in model.model_fields.items():
        cli = marker(field, Cli) or Cli()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and cli.flag is None:
            found += leaves(field.annotation, (*prefix, name))
        else:
            found.append(((*prefix, name), field))
    return found


def flag_of(name: str, field) -> str:
    cli = marker(field, Cli) or Cli()
    return cli.collect_flag or cli.flag or "--" + name.replace("_", "-")


def command_parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def collect_help() -> str:
    return command_parser("collect").format_help()


def schema_node(schema: dict, path: tuple[str, ...]) -> dict:
    defs = schema["definitions"]
    node = defs["CollectConfig"]
    for part in path[:-1]:
        ref = node["properties"][part].get("$ref") or node["properties"][part]["allOf"][0]["$ref"]
        node = defs[ref.rsplit("/", 1)[-1]]
    return node["properties"][path[-1]]


def test_every_field_is_a_flag_a_form_field_and_a_manifest_key(tmp_path):
    help_text = collect_help()
    schema = parameter_schema(collect_rollouts.fn).model_dump()
    config = CollectConfig(input="p.jsonl", model_url="http://x/v1", model="m")
    manifest = write_manifest(Store(str(tmp_path)), RunRef(run_id="r", run_url=str(tmp_path), config=config))
    for path, field in leaves(CollectConfig):
        cli = marker(field, Cli) or Cli()
        if cli.positional:
            assert path[-1].upper() in help_text
        else:
            assert flag_of(path[-1], field) in help_text, path
        node = schema_node(schema, path)
        assert node.get("description") == field.description and field.description, path
        assert "type" in node or "anyOf" in node or "$ref" in node or "allOf" in node, path
        if not field.is_required() and path != ("storage", "options"):
            stored = manifest["config"]
            for part in path:
                stored = stored[part]
            assert stored is not None or field.default is None, path
    assert "options" not in manifest["config"]["storage"]  # fsspec options may hold credentials


def test_the_run_form_has_no_null_branch_in_any_section():
    """The UI's run form of a deployment shows a field typed `T | None` as a T/None picker with "Property is type
    'None'" under it: every section's optional fields are plain T in the deployments' parameter schema."""
    schema = parameter_schema(collect_from_sections.fn).model_dump()
    nulls = [
        f"{section}.{name}"
        for section, node in [("", schema), *schema["definitions"].items()]
        for name, prop in node.get("properties", {}).items()
        if {"type": "null"} in prop.get("anyOf", []) or prop.get("type") == "null"
    ]
    assert nulls == []


def test_a_new_field_appears_in_help_form_and_manifest_with_nothing_else_written(tmp_path):
    sampling = create_model(
        "SamplingConfig",
        __base__=SamplingConfig,
        frequency_penalty=(float | None, Field(None, ge=-2, le=2, description="penalise repeats")),
    )
    extended = create_model(
        "CollectConfig", __base__=CollectConfig, sampling=(sampling, Field(default_factory=sampling))
    )
    parser = argparse.ArgumentParser(prog="rollouts collect")
    options = add_model_options(parser, extended, command="collect")
    assert (
        "--frequency-penalty FREQUENCY_PENALTY" in parser.format_help() and "penalise repeats" in parser.format_help()
    )
    args = parser.parse_args(["p.jsonl", "--model-url", "http://x/v1", "--model", "m", "--frequency-penalty", "0.5"])
    config = extended.model_validate(build(args, options))
    assert config.sampling.frequency_penalty == 0.5
    manifest = write_manifest(Store(str(tmp_path)), RunRef(run_id="r", run_url=str(tmp_path), config=config))
    assert manifest["config"]["sampling"]["frequency_penalty"] == 0.5
    form = extended.model_json_schema()["$defs"]["SamplingConfig"]["properties"]["frequency_penalty"]
    # The form shows it as a number field: no `anyOf [number, null]` type picker, no null default to prefill.
    assert form["description"] == "penalise repeats" and form["type"] == "number" and "default" not in form
    with pytest.raises(SystemExit):
        parser.parse_args(["p.jsonl", "--model-url", "http://x/v1", "--model", "m", "--frequency-penalty", "x"])


# ----- rollouts tune and rollouts tokens ------------------------------------------------------------------------------

COMMAND_MODELS = {"tune": TuneConfig, "tokens": TokensConfig}


@pytest.mark.parametrize("command", sorted(COMMAND_MODELS))
def test_every_tune_and_tokens_field_is_a_flag_with_its_description(command):
    parser = command_parser(command)
    help_text = parser.format_help()
    by_dest = {a.dest: a for a in parser._actions}
    fields = leaves(COMMAND_MODELS[command])
    assert fields and {o.path for o in parser.get_default("options")} == {path for path, _ in fields}
    for path, field in fields:
        cli = marker(field, Cli) or Cli()
        label = (cli.metavar or path[-1].upper()) if cli.positional else (cli.flag or "--" + path[-1].replace("_", "-"))
        assert label in help_text, (command, path)
        assert field.description and by_dest["__".join(path)].help.startswith(field.description.replace("%", "%%"))


# Flags that name different options in different commands (each set: the commands that share one meaning).
SAME_NAME_OTHER_OPTION = {
    "--start": [{"collect"}, {"tune"}],  # collect: first input row; tune: first --parallel step
    "--out": [{"collect"}, {"tune"}, {"process", "tokens"}],  # runs / tune's result files / training files
    "--max-output-tokens": [
        {"collect", "tune"},
        {"process"},
    ],  # sampling limit / the sft filter (--sft-max-output-tokens in collect)
    "--max-turns": [{"collect"}, {"process"}],  # the agent loop's limit / the sft filter (--sft-max-turns in collect)
    "--objective": [
        {"collect"},
        {"process"},
    ],  # collect: optional, the first sets the sampling preset; process: required
}


def test_a_flag_shared_by_two_commands_has_one_help_and_one_default():
    helps: dict[str, dict[str, str]] = {}
    for command in ("collect", "process", "tune", "tokens"):
        parser = command_parser(command)
        by_dest = {a.dest: a for a in parser._actions}
        for option in parser.get_default("options"):
            helps.setdefault(option.label, {})[command] = by_dest[option.dest].help  # the default is in the help
    shared = {label: by_command for label, by_command in helps.items() if len(by_command) > 1}
    assert {
        "--model-url",
        "--model",
        "--api",
        "--api-key-env",
        "--max-parallel",
        "--request-timeout",
        "--temperature",
        "--on-break",
        "--skip-bad-rows",
        "--advantage-scale",
        "--storage-options",
        "INPUT",
        "INPUTS",
    } <= set(shared)
    for label, by_command in shared.items():
        groups = SAME_NAME_OTHER_OPTION.get(label, [set(by_command)])
        assert set().union(*groups) == set(by_command), (label, sorted(by_command))
        for group in groups:
            assert len({by_command[c] for c in group}) == 1, (label, {c: by_command[c] for c in group})


def test_a_new_tune_field_is_a_flag_and_reaches_the_config(monkeypatch):
    extended = create_model(
        "TuneConfig",
        __base__=TuneConfig,
        warmup_seconds=(float, Field(0.0, ge=0, description="unmeasured time before each step")),
    )
    monkeypatch.setattr(commands.tune, "TuneConfig", extended)
    parser = argparse.ArgumentParser(prog="rollouts tune")
    commands.tune.add_arguments(parser)
    assert (
        "--warmup-seconds WARMUP_SECONDS" in parser.format_help()
        and "unmeasured time before each step" in parser.format_help()
    )
    given = [
        "p.jsonl",
        "--model-url",
        "http://x/v1/",
        "--model",
        "sim-model",
        "--warmup-seconds",
        "2.5",
        "--max-parallel",
        "64",
    ]
    config = commands.tune.tune_config(parser.parse_args(given))
    assert (config.warmup_seconds, config.max_parallel, config.model_url, config.start) == (2.5, 64, "http://x/v1", 8)
    with pytest.raises(ConfigError, match="--warmup-seconds"):
        commands.tune.tune_config(parser.parse_args([*given, "--warmup-seconds", "-1"]))


def test_a_new_tokens_field_is_a_flag_and_reaches_the_config(monkeypatch, tmp_path):
    extended = create_model(
        "TokensConfig",
        __base__=TokensConfig,
        max_samples=(int | None, Field(None, ge=1, description="stop after this many samples")),
    )
    monkeypatch.setattr(commands.tokens, "TokensConfig", extended)
    parser = argparse.ArgumentParser(prog="rollouts tokens")
    commands.tokens.add_arguments(parser)
    assert (
        "--max-samples MAX_SAMPLES" in parser.format_help() and "stop after this many samples" in parser.format_help()
    )
    config = commands.tokens.tokens_config(
        parser.parse_args(["r1", "r2", "--out", str(tmp_path), "--max-samples", "3", "--on-break", "splice"])
    )
    assert (config.max_samples, config.inputs, config.on_break, config.storage_options) == (
        3,
        ["r1", "r2"],
        "splice",
        {},
    )
    assert config.process_config().on_break == "splice" and config.process_config().advantage_scale == "group"
    with pytest.raises(ConfigError, match="--max-samples"):
        commands.tokens.tokens_config(parser.parse_args(["r1", "--out", str(tmp_path), "--max-samples", "0"]))


# The deployments' entrypoint through Prefect's own loader, in a fresh interpreter: importing the CLI's flow and
# serializing its parameters leaves the deployments' flow (and its parameter schema) unbuilt and FastAPI unimported,
# and the entrypoint still gives the deployments' flow.
ENTRYPOINT_CHILD = r"""
import json, sys
import flows.collect
from rollouts.config import CollectConfig
config = CollectConfig(input="/p.jsonl", model_url="http://127.0.0.1:1/v1", model="m")
flows.collect.collect_rollouts.serialize_parameters({"config": config})
cli_only = "flows.sections" not in sys.modules and "fastapi" not in sys.modules
from prefect.flows import load_flow_from_entrypoint
loaded = load_flow_from_entrypoint("flows/collect.py:collect_from_sections")
print(json.dumps({"cli_only": cli_only, "name": loaded.name, "parameters": sorted(loaded.parameters.properties)}))
"""


def test_the_deployments_entrypoint_gives_the_sections_flow_which_a_cli_run_never_imports() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", ENTRYPOINT_CHILD], capture_output=True, text=True, cwd=root, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["cli_only"], "the CLI's flow imported the deployments' flow or FastAPI"
    assert report["name"] == "collect-rollouts"
    assert report["parameters"] == sorted(collect_from_sections.parameters.properties)
    assert {"input", "endpoint", "sampling", "quality"} <= set(report["parameters"])


def test_the_cli_flow_sends_the_parameters_prefects_own_encoder_would() -> None:
    """collect_rollouts serializes its config with pydantic (no FastAPI import): the same JSON the API got before."""
    from fastapi.encoders import jsonable_encoder

    config = CollectConfig.model_validate(
        {
            "input": "/data/p.jsonl",
            "objective": ["rl", "sft"],
            "endpoint": {"model_url": "http://127.0.0.1:1/v1", "model": "m", "request_timeout": 30},
            "sampling": {"num_repeats": 3, "temperature": 0.5},
            "concurrency": {"parallel": "auto"},
            "environments": {"remote_env": {"calc": "http://127.0.0.1:2"}},
        }
    )
    assert collect_rollouts.serialize_parameters({"config": config}) == {"config": jsonable_encoder(config)}
