"""What a new user meets in the first hour: each usage error is one exact line, exit 2, before Prefect starts; runs are
named after themselves, failed runs write no training files and say why once."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import rollouts
from tests.integration.conftest import free_port, math_rows, write_jsonl


def collect(src: Path, url: str, out: Path, *extra: str, api_url: str | None = None):
    return rollouts(
        "collect",
        str(src),
        "--model-url",
        url,
        "--model",
        "sim-model",
        "--out",
        str(out),
        "--no-progress",
        *extra,
        api_url=api_url,
    )


def test_missing_input_is_one_line_and_fast(tmp_path, sim):
    result = collect(tmp_path / "nope.jsonl", sim.url, tmp_path)
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [f"error: input '{tmp_path / 'nope.jsonl'}' does not exist: check the path"]


def test_empty_input_is_one_line_and_fast(tmp_path, sim):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    result = collect(tmp_path / "empty.jsonl", sim.url, tmp_path)
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [f"error: input '{tmp_path / 'empty.jsonl'}' is empty: it has no rows"]


def test_unreachable_server_is_one_line_and_fast(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = collect(src, url, tmp_path)
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [
        f"error: cannot reach the model server at {url} (ConnectError): is it running, and "
        "is --model-url right (it usually ends in /v1)?"
    ]


def test_a_url_without_v1_is_a_usage_error_that_suggests_it(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    base = sim.url.removesuffix("/v1")
    result = collect(src, base, tmp_path)
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [
        f"error: {base}/models answered 404: --model-url is not an OpenAI-compatible base URL; did you mean {base}/v1?"
    ]


def test_option_errors_do_not_speak_pydantic(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    result = collect(src, sim.url, tmp_path, "--start", "20", "--end", "5")
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == ["error: --end (5) must be greater than --start (20)"]
    result = collect(src, sim.url, tmp_path, "--temperature", "9")
    assert result.error_lines == ["error: --temperature: Input should be less than or equal to 2"]


def test_run_name_clash_is_refused_before_prefect_starts(tmp_path, sim, prefect_server):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    first = collect(src, sim.url, tmp_path, "--run-name", "mine", "--num-repeats", "1", api_url=prefect_server)
    assert first.code == 0, first.err[-2000:]
    clash = collect(src, sim.url, tmp_path, "--run-name", "mine", "--num-repeats", "2", api_url=prefect_server)
    assert (clash.code, clash.fast) == (2, True)
    assert clash.error_lines == [
        f"error: run 'mine' at {tmp_path / 'mine'} was collected with a different config or input (changed: "
        "num_repeats). Pick another --run-name, or delete that run to start over."
    ]
    again = collect(src, sim.url, tmp_path, "--run-name", "mine", "--num-repeats", "1", api_url=prefect_server)
    assert again.code == 0 and f"resuming run {tmp_path / 'mine'}: 2 of 2 rollouts already done" in again.err


def test_flow_run_is_named_after_the_run_and_stores_absolute_paths(tmp_path, sim, prefect_server):
    write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    result = rollouts(
        "collect",
        "p.jsonl",
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        "./runs",
        "--run-name",
        "named",
        "--num-repeats",
        "1",
        "--no-progress",
        api_url=prefect_server,
        cwd=tmp_path,
        env={"PREFECT_LOGGING_LEVEL": ""},
    )  # the CLI's own default, not the test suite's WARNING
    assert result.code == 0, result.err[-2000:]
    import httpx

    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={"flow_runs": {"name": {"any_": ["named"]}}}).json()
    assert len(runs) == 1
    config = runs[0]["parameters"]["config"]
    assert config["input"] == str(tmp_path / "p.jsonl") and config["storage"]["out"] == str(tmp_path / "runs")
    logs = httpx.post(f"{prefect_server}/logs/filter", json={"logs": {"flow_run_id": {"any_": [runs[0]["id"]]}}}).json()
    assert any("prompts in" in log["message"] for log in logs)  # the stages' INFO lines reach the run's logs


class WrongRoute(BaseHTTPRequestHandler):
    """A server whose /v1/models answers but whose completions route does not exist (a wrong proxy path)."""

    def do_GET(self):  # noqa: N802
        body = json.dumps({"object": "list", "data": [{"id": "sim-model", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"error": {"message": "Not Found", "code": 404}}'
        self.send_response(404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def wrong_route():
    server = ThreadingHTTPServer(("127.0.0.1", 0), WrongRoute)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_every_request_refused_stops_early_and_writes_no_training_files(tmp_path, wrong_route, prefect_server):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(60))
    result = collect(
        src,
        wrong_route,
        tmp_path,
        "--run-name",
        "refused",
        "--num-repeats",
        "4",
        "--parallel",
        "4",
        "--objective",
        "rl,sft",
        api_url=prefect_server,
    )
    assert result.code == 1
    run = tmp_path / "refused"
    generated = sum(len(f.read_bytes().splitlines()) for f in (run / "generations").glob("*.jsonl"))
    assert generated < 60 * 4 / 2  # stopped early, not after all 240 requests
    assert result.out.count("stopped early: the first 16 rollouts all failed with HTTP 404") == 1
    assert "run again to retry" not in result.out + result.err
    assert "ProviderError 404" in result.out  # the summary's failure types
    assert not (run / "train").exists()
    assert "Traceback" not in result.err


def test_a_model_the_server_does_not_serve_is_refused_before_any_request(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    before = sim.stats()
    result = rollouts(
        "collect", str(src), "--model-url", sim.url, "--model", "gpt-5", "--out", str(tmp_path), "--no-progress"
    )
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [
        f"error: --model 'gpt-5' is not served by {sim.url} (it serves sim-model); "
        "pass --no-model-check for a gateway whose model list is incomplete"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no run folder
    assert sim.stats()["requests"] == before["requests"]  # not one model request was sent


def test_a_typo_in_env_is_refused_with_the_environments(tmp_path, sim):
    rows = [{**row, "agent_ref": {"name": "math"}} for row in math_rows(2)]  # every row names its own environment
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    result = collect(src, sim.url, tmp_path, "--env", "kv_stor")
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [
        "error: --env 'kv_stor' is not an environment; choose from calculator, exact_match, kv_store, math, "
        "multiple_choice"
    ]


def test_collect_help_lists_every_built_in_environment():
    result = rollouts("collect", "--help")
    text = " ".join(result.out.split())
    assert result.code == 0
    assert "math, exact_match, multiple_choice, calculator, kv_store" in text


def test_token_records_without_token_ids_are_refused(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    result = collect(src, sim.url, tmp_path, "--format", "tokens")
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [
        "error: --format tokens needs --return-tokens: token records are built from the ids the server sends"
    ]


def test_bad_storage_options_json_is_one_line(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    result = collect(src, sim.url, tmp_path, "--storage-options", "{bad")
    assert result.code == 2
    assert result.error_lines == [
        "error: argument --storage-options: not JSON: Expecting property name enclosed in double quotes "
        "(see rollouts collect --help)"
    ]


def test_a_bucket_that_does_not_exist_is_refused_before_prefect_starts(tmp_path, sim, s3_endpoint):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    result = rollouts(
        "collect",
        str(src),
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        "s3://no-such-bucket/runs",
        "--no-progress",
    )
    assert (result.code, result.fast) == (2, True)
    assert result.error_lines == [
        "error: s3://no-such-bucket/runs: the bucket 'no-such-bucket' does not exist (or these credentials cannot "
        "see it)"
    ]


def test_an_object_store_that_does_not_answer_is_one_line(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    dead = json.dumps({"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}})
    result = rollouts(
        "collect",
        str(src),
        "--model-url",
        sim.url,
        "--model",
        "sim-model",
        "--out",
        "s3://bucket/runs",
        "--storage-options",
        dead,
        "--no-progress",
        env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )
    assert result.code == 2
    [line] = result.error_lines
    assert line.startswith("error: cannot use the output place s3://bucket/runs: ") or line.startswith(
        "error: the output place s3://bucket/runs did not answer within 10 s"
    ), line


def test_a_stale_prefect_api_url_is_one_line(tmp_path, sim):
    src = write_jsonl(tmp_path / "p.jsonl", math_rows(2))
    api = f"http://127.0.0.1:{free_port()}/api"
    result = collect(src, sim.url, tmp_path, api_url=api)
    assert result.code == 2
    assert result.error_lines[-1] == (
        f"error: PREFECT_API_URL={api} does not answer (ConnectError): start that Prefect server, or unset "
        "PREFECT_API_URL to let rollouts use its local one"
    )
    assert "Traceback" not in result.err


def test_process_of_a_prompts_file_says_why_nothing_was_written(tmp_path):
    src = write_jsonl(tmp_path / "prompts.jsonl", math_rows(4))
    result = rollouts("process", str(src), "--objective", "rl", "--out", str(tmp_path / "out"))
    assert result.code == 1
    assert result.error_lines[-1] == (
        "error: rl: nothing written: all 4 rows are failed rollouts or rows without a model response: is the input a "
        "prompts file? `rollouts process` reads collected rollouts (run `rollouts collect` on prompts)"
    )


def test_tokens_of_a_run_without_token_ids_says_why_nothing_was_written(tmp_path):
    run = Path(__file__).resolve().parents[1] / "fixtures" / "process" / "run"
    result = rollouts("tokens", str(run), "--out", str(tmp_path / "tok"))
    assert result.code == 1
    assert result.error_lines[-1] == (
        "error: nothing written: no rollout carries token ids: collect with --return-tokens (a server that returns "
        "them) first"
    )
