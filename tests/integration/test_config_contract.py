"""One declaration per option: every CollectConfig field is a flag in --help, a typed, described field of the flow's
parameter schema (the Prefect UI's run form) and a key of the run's manifest; a field added to a section appears in
all three with nothing else written."""

from __future__ import annotations

import argparse
import typing

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel, Field, create_model

from commands import build_parser
from commands.options import add_model_options, build
from flows.collect import collect_rollouts
from rollouts.config import CollectConfig, SamplingConfig
from rollouts.options import Cli, marker
from rollouts.run import RunRef, write_manifest
from rollouts.storage import Store


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


def collect_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["collect"].format_help()


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
        assert ("type" in node or "anyOf" in node or "$ref" in node or "allOf" in node), path
        if not field.is_required() and path != ("storage", "options"):
            stored = manifest["config"]
            for part in path:
                stored = stored[part]
            assert stored is not None or field.default is None, path
    assert "options" not in manifest["config"]["storage"]  # fsspec options may hold credentials


def test_a_new_field_appears_in_help_form_and_manifest_with_nothing_else_written(tmp_path):
    sampling = create_model("SamplingConfig", __base__=SamplingConfig,
                            frequency_penalty=(float | None, Field(None, ge=-2, le=2, description="penalise repeats")))
    extended = create_model("CollectConfig", __base__=CollectConfig,
                            sampling=(sampling, Field(default_factory=sampling)))
    parser = argparse.ArgumentParser(prog="rollouts collect")
    options = add_model_options(parser, extended, command="collect")
    assert "--frequency-penalty FREQUENCY_PENALTY" in parser.format_help() and "penalise repeats" in parser.format_help()
    args = parser.parse_args(["p.jsonl", "--model-url", "http://x/v1", "--model", "m", "--frequency-penalty", "0.5"])
    config = extended.model_validate(build(args, options))
    assert config.sampling.frequency_penalty == 0.5
    manifest = write_manifest(Store(str(tmp_path)), RunRef(run_id="r", run_url=str(tmp_path), config=config))
    assert manifest["config"]["sampling"]["frequency_penalty"] == 0.5
    form = extended.model_json_schema()["$defs"]["SamplingConfig"]["properties"]["frequency_penalty"]
    assert form["description"] == "penalise repeats" and form["default"] is None
    with pytest.raises(SystemExit):
        parser.parse_args(["p.jsonl", "--model-url", "http://x/v1", "--model", "m", "--frequency-penalty", "x"])
