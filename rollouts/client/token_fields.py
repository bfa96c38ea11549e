"""Token fields of one model call: what to ask a server for, and how to read vLLM's, SGLang's and NeMo's replies.

Whatever the server, a call keeps NeMo Gym's three fields on its last output item: `prompt_token_ids`,
`generation_token_ids`, `generation_log_probs`. Sources, in this order (the shapes NeMo Gym's own adapters read:
`responses_api_models/vllm_model/app.py` and `responses_api_models/sglang_model/app.py` in NVIDIA-NeMo/Gym):

- a complete bundle on `choices[0].message` (NeMo RL's vLLM server puts it there);
- vLLM >= 0.10.2 with `return_token_ids`: top-level `prompt_token_ids`, `choices[0].token_ids`;
- SGLang >= 0.5.13 with `return_prompt_token_ids` / `return_token_ids` / `return_meta_info`:
  `choices[0].prompt_token_ids`, `choices[0].token_ids`, and `choices[0].meta_info.output_token_logprobs` as
  `[logprob, token_id, text]` triples or `{"logprob", "token_id"}` objects (or the parallel
  `output_token_logprobs_val` / `_idx` arrays);
- `choices[0].logprobs.content[*]`: the log-probabilities, and the ids too when each entry has an integer `id`
  (llama.cpp's `llama-server`) or its `token` reads `token_id:N` (vLLM's `return_tokens_as_token_ids`). Such servers
  send no prompt ids: the server's own tokenization of the exact rendered prompt gives them, never a local guess
  (llama.cpp: `/apply-template` then `/tokenize`; vLLM < 0.10.2: its chat `/tokenize`, as NeMo Gym's adapter does).

The `--token-source` (`TokenSource`) names where a run's ids come from: what it asks for (`SOURCE_REQUESTS`) and
whether prompt ids need the server's tokenizer (`PROMPT_ROUTES`); `auto` asks for all of them and picks the source
from the first reply (`detect_source`).

Generation ids found in several places must agree. When token fields were asked for and the reply lacks them, the call
fails with `TokenFieldsError` naming what is missing; it is never kept as text alone.
"""

from __future__ import annotations

from typing import Any, Literal

from rollouts.errors import TokenFieldsError

TOKEN_FIELDS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
# Request fields that make vLLM and SGLang return token ids and log-probabilities on Chat Completions. Each server
# ignores the other's names. `top_logprobs: 0` because vLLM returns no logprobs at all when it is null.
CHAT_TOKEN_REQUEST = {
    "logprobs": True,
    "top_logprobs": 0,
    "return_token_ids": True,  # vLLM >= 0.10.2, SGLang >= 0.5.13
    "return_tokens_as_token_ids": True,  # vLLM: logprobs tokens as "token_id:N", the fallback for older servers
    "return_prompt_token_ids": True,  # SGLang
    "return_meta_info": True,  # SGLang: meta_info.output_token_logprobs
}
RESPONSES_TOKEN_REQUEST = {"return_token_ids": True}

TokenSource = Literal["vllm", "sglang", "llamacpp", "tokenize"]
TOKEN_SOURCES: tuple[TokenSource, ...] = ("vllm", "sglang", "llamacpp", "tokenize")
# What each source's requests ask for. llama.cpp returns no logprobs at all with `top_logprobs: 0` and 20
# alternatives per token without it, so it gets 1; vLLM and SGLang get 0. `auto` asks every server's way at once.
SOURCE_REQUESTS: dict[str, dict[str, Any]] = {
    "vllm": {"logprobs": True, "top_logprobs": 0, "return_token_ids": True},
    "sglang": {
        "logprobs": True,
        "top_logprobs": 0,
        "return_token_ids": True,
        "return_prompt_token_ids": True,
        "return_meta_info": True,
    },
    "llamacpp": {"logprobs": True, "top_logprobs": 1},
    "tokenize": {"logprobs": True, "top_logprobs": 0, "return_tokens_as_token_ids": True},
    "auto": {**CHAT_TOKEN_REQUEST, "top_logprobs": 1},
}
# Sources whose replies carry generation ids only: the prompt ids come from the server's tokenizer, by this route.
PROMPT_ROUTES: dict[str, Literal["apply-template", "chat-tokenize"]] = {
    "llamacpp": "apply-template",  # POST /apply-template (the rendered prompt), then POST /tokenize of that text
    "tokenize": "chat-tokenize",  # vLLM's chat POST /tokenize of the same messages
}
NO_SOURCE_HINT = (
    "--return-tokens needs a server that returns token ids (vLLM, SGLang, llama.cpp's llama-server); "
    "hosted APIs do not. --token-source vllm|sglang|llamacpp|tokenize names one (default auto)"
)
_HINT = (
    "the server must return token ids: vLLM >= 0.10.2 (return_token_ids), SGLang >= 0.5.13 "
    "(return_prompt_token_ids, return_meta_info), llama.cpp's llama-server (logprobs ids) or NeMo RL's server; "
    "hosted APIs do not return them (--token-source names where they come from)"
)


# vLLM's chat `/tokenize` fields, the ones NeMo Gym's vLLM adapter sends so prompt ids match the generation's.
TOKENIZE_FIELDS = ("model", "messages", "tools", "chat_template_kwargs", "mm_processor_kwargs")


def tokenize_request(base_url: str, chat_body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(URL, body) of vLLM's `/tokenize` (served at the root, not under /v1) for the prompt of a chat request."""
    return base_url.removesuffix("/").removesuffix("/v1") + "/tokenize", {
        key: chat_body[key] for key in TOKENIZE_FIELDS if key in chat_body
    }


def server_root(base_url: str) -> str:
    """The server's root URL (vLLM's and llama.cpp's tokenizer endpoints are not under /v1)."""
    return base_url.removesuffix("/").removesuffix("/v1")


def tokenize_ids(tokenize_reply: Any) -> list[int]:
    """The ids of a `/tokenize` reply (vLLM's and llama.cpp's both hold them in `tokens`)."""
    tokens = tokenize_reply.get("tokens") if isinstance(tokenize_reply, dict) else None
    return _int_list(tokens, "/tokenize reply `tokens`")


def rendered_prompt(apply_template_reply: Any) -> str:
    """The prompt text of llama.cpp's `/apply-template` reply."""
    prompt = apply_template_reply.get("prompt") if isinstance(apply_template_reply, dict) else None
    if not isinstance(prompt, str):
        raise TokenFieldsError("/apply-template reply without a `prompt` string", missing=["prompt_token_ids"])
    return prompt


def llamacpp_tokenize_body(prompt: str) -> dict[str, Any]:
    """llama.cpp's `/tokenize` of a rendered prompt: its special tokens parsed, no BOS added (the template has it)."""
    return {"content": prompt, "add_special": False, "parse_special": True}


def with_prompt_ids(data: dict[str, Any], tokenize_reply: Any) -> dict[str, Any]:
    """The chat reply with the prompt ids of a `/tokenize` reply, in vLLM's place, ready to parse again."""
    return {**data, "prompt_token_ids": tokenize_ids(tokenize_reply)}


def has_prompt_ids(data: dict[str, Any]) -> bool:
    """Whether a chat reply carries prompt ids in any place a source puts them."""
    if data.get("prompt_token_ids") is not None:
        return True
    choice = (data.get("choices") or [{}])[0]
    if not isinstance(choice, dict):
        return False
    message = choice.get("message") or {}
    return choice.get("prompt_token_ids") is not None or message.get("prompt_token_ids") is not None


def check_prompt_count(ids: list[int], data: dict[str, Any]) -> None:
    """The server's tokenization of the prompt must have as many ids as the generation's `usage.prompt_tokens`."""
    usage = data.get("usage")
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(count, int) and count > 0 and count != len(ids):
        raise TokenFieldsError(
            f"the server's tokenization of the rendered prompt has {len(ids)} ids but the reply's "
            f"usage.prompt_tokens is {count}: its prompt ids would not be the ones the model saw",
            missing=[],
        )


def detect_source(data: dict[str, Any]) -> TokenSource | None:
    """The source whose ids a chat reply (to `SOURCE_REQUESTS["auto"]`) carries, or None when it carries none."""
    choice = (data.get("choices") or [{}])[0]
    if not isinstance(choice, dict):
        return None
    message = choice.get("message") or {}
    if isinstance(message, dict) and any(message.get(name) is not None for name in TOKEN_FIELDS):
        return "vllm"  # NeMo RL's vLLM server
    if data.get("prompt_token_ids") is not None:  # vLLM's place (the simulated server fills SGLang's too)
        return "vllm"
    if choice.get("prompt_token_ids") is not None or isinstance(choice.get("meta_info"), dict):
        return "sglang"
    if choice.get("token_ids") is not None:
        return "vllm"
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        if isinstance(first.get("id"), int) and not isinstance(first.get("id"), bool):
            return "llamacpp"
        if _id_of(first.get("token")) is not None:
            return "tokenize"
    return None


# The container and its first element are checked, not every element: a prompt of 8k ids would otherwise cost ~0.3 ms
# per call in the collector (NeMo Gym's adapter does not scan them either); the rollout loader types every element.
def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or (value and (not isinstance(value[0], int) or isinstance(value[0], bool))):
        raise TokenFieldsError(f"{where} must be a list of integer token ids", missing=[])
    return value


def _float_list(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or (value and (not isinstance(value[0], int | float) or isinstance(value[0], bool))):
        raise TokenFieldsError(f"{where} must be a list of numbers", missing=[])
    return value


def _id_of(token: Any) -> int | None:
    if isinstance(token, str) and token.startswith("token_id:"):
        try:
            return int(token[9:])
        except ValueError:
            return None
    return None


def _from_logprobs(choice: dict[str, Any]) -> tuple[list[int] | None, list[float] | None]:
    """(ids from `token_id:N` tokens or None, logprobs or None) from OpenAI-style `logprobs.content`."""
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if not isinstance(content, list):
        return None, None
    ids: list[int] | None = []
    values: list[float] = []
    for index, entry in enumerate(content):
        if not isinstance(entry, dict):
            raise TokenFieldsError(f"choices[0].logprobs.content[{index}] is not an object", missing=[])
        value = entry.get("logprob")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TokenFieldsError(f"choices[0].logprobs.content[{index}].logprob is not a number", missing=[])
        values.append(float(value))
        token_id = entry.get("id")  # llama.cpp
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            token_id = _id_of(entry.get("token"))  # vLLM's token_id:N
        if ids is not None and token_id is not None:
            ids.append(token_id)
        else:
            ids = None
    return ids, values


def _from_meta_info(choice: dict[str, Any]) -> tuple[list[int] | None, list[float] | None]:
    """(ids, logprobs) from SGLang's `meta_info`, each None when absent."""
    meta = choice.get("meta_info")
    if not isinstance(meta, dict):
        return None, None
    output_ids = _int_list(meta["output_ids"], "meta_info.output_ids") if meta.get("output_ids") is not None else None
    entries = meta.get("output_token_logprobs")
    if isinstance(entries, list):
        ids, values = [], []
        for index, entry in enumerate(entries):
            if isinstance(entry, dict):
                token_id, value = entry.get("token_id", entry.get("id")), entry.get("logprob")
            elif isinstance(entry, list | tuple) and len(entry) >= 2:
                value, token_id = entry[0], entry[1]
            else:
                token_id = value = None
            if not isinstance(token_id, int) or not isinstance(value, int | float):
                raise TokenFieldsError(f"meta_info.output_token_logprobs[{index}] is malformed: {entry!r}", missing=[])
            ids.append(token_id)
            values.append(float(value))
        return _agree(output_ids, ids, "meta_info.output_ids", "meta_info.output_token_logprobs"), values
    if meta.get("output_token_logprobs_val") is not None:
        values = _float_list(meta["output_token_logprobs_val"], "meta_info.output_token_logprobs_val")
        idx = meta.get("output_token_logprobs_idx")
        idx_ids = _int_list(idx, "meta_info.output_token_logprobs_idx") if idx is not None else None
        return _agree(output_ids, idx_ids, "meta_info.output_ids", "meta_info.output_token_logprobs_idx"), values
    return output_ids, None


def _agree(first: list[int] | None, second: list[int] | None, first_name: str, second_name: str) -> list[int] | None:
    if first is not None and second is not None and first != second:
        raise TokenFieldsError(f"{first_name} and {second_name} disagree on the generated token ids", missing=[])
    return first if first is not None else second


def _checked(fields: dict[str, Any], asked: bool, where: str) -> dict[str, Any]:
    """The complete, well-typed bundle; when not asked for, a partial or malformed one is left out instead of
    raising."""
    missing = [name for name in TOKEN_FIELDS if fields.get(name) is None]
    if missing and not asked:  # the usual reply of a run without --return-tokens: no error built to be dropped
        return {}
    try:
        if missing:
            raise TokenFieldsError(
                f"{where}: token fields were asked for but {', '.join(missing)} missing; {_HINT}", missing=missing
            )
        generated = _int_list(fields["generation_token_ids"], f"{where} generation_token_ids")
        values = _float_list(fields["generation_log_probs"], f"{where} generation_log_probs")
        bundle: dict[str, Any] = {
            "prompt_token_ids": _int_list(fields["prompt_token_ids"], f"{where} prompt_token_ids"),
            "generation_token_ids": generated,
            "generation_log_probs": values,
        }
        if len(generated) != len(values):
            raise TokenFieldsError(
                f"{where}: {len(generated)} generated token ids but {len(values)} log-probabilities", missing=[]
            )
    except TokenFieldsError:
        if asked:
            raise
        return {}
    return bundle


def chat_token_fields(data: dict[str, Any], asked: bool) -> dict[str, Any]:
    """NeMo Gym's three fields from a Chat Completions reply ({} when absent, or malformed and not asked for)."""
    if not asked and not _may_carry_prompt_ids(data):  # the usual reply without --return-tokens: nothing to read
        return {}
    try:
        return _chat_fields(data, asked)
    except TokenFieldsError:
        if asked:
            raise
        return {}


def _may_carry_prompt_ids(data: dict[str, Any]) -> bool:
    """Whether a reply has prompt ids where `_chat_fields` looks (a bundle without them is left out unless asked)."""
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    on_message = isinstance(message, dict) and any(message.get(name) is not None for name in TOKEN_FIELDS)
    return on_message or data.get("prompt_token_ids") is not None or choice.get("prompt_token_ids") is not None


def _chat_fields(data: dict[str, Any], asked: bool) -> dict[str, Any]:
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    if any(message.get(name) is not None for name in TOKEN_FIELDS):
        return _checked({name: message.get(name) for name in TOKEN_FIELDS}, asked, "choices[0].message")
    prompt = data.get("prompt_token_ids")
    if prompt is None:
        prompt = choice.get("prompt_token_ids")
    generated = choice.get("token_ids")
    if generated is not None:
        generated = _int_list(generated, "choices[0].token_ids")
    meta_ids, meta_values = _from_meta_info(choice)
    logprob_ids, values = _from_logprobs(choice)
    generated = _agree(generated, meta_ids, "choices[0].token_ids", "meta_info")
    generated = _agree(generated, logprob_ids, "the generated token ids", "choices[0].logprobs tokens")
    values = values if values is not None else meta_values
    fields = {"prompt_token_ids": prompt, "generation_token_ids": generated, "generation_log_probs": values}
    return _checked(fields, asked, "chat completion")


def responses_token_fields(output: list[dict[str, Any]], asked: bool) -> None:
    """Move a Responses reply's token fields onto its last output item, in place; raise when asked and absent."""
    carriers = [item for item in output if isinstance(item, dict) and any(name in item for name in TOKEN_FIELDS)]
    if not carriers:
        if asked:
            raise TokenFieldsError(
                f"Responses API reply: token fields were asked for but none returned; {_HINT}",
                missing=list(TOKEN_FIELDS),
            )
        return
    source = carriers[-1]
    bundle = _checked({name: source.get(name) for name in TOKEN_FIELDS}, asked, "Responses API output item")
    for item in carriers:
        for name in TOKEN_FIELDS:
            item.pop(name, None)
    if bundle and output:
        output[-1].update(bundle)
