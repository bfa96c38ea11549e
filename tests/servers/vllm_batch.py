"""A faithful pydantic copy of the request model vLLM's `run-batch` reads each input line with (`BatchRequestInput`).

vLLM cannot be installed here, so the models are copied, not imported. Sources (vLLM 0.10 series):
  - vllm/entrypoints/openai/protocol.py at commit 0052bed36509c7a5a2d8e48265334e40cf2f5a0e:
    OpenAIBaseModel, StreamOptions, FunctionDefinition, ChatCompletionToolsParam, ChatCompletionNamedFunction,
    ChatCompletionNamedToolChoiceParam, ResponseFormat, ChatCompletionRequest (fields and `mode="before"`
    validators), BatchRequestInput (with its `check_type_for_url` body validator);
  - vllm/entrypoints/chat_utils.py of the same series: CustomChatCompletionMessageParam, ChatCompletionMessageParam;
  - the OpenAI message TypedDicts that union includes, from openai-python src/openai/types/chat/
    (chat_completion_{developer,system,user,assistant,tool,function}_message_param.py, the content-part params and
    chat_completion_message_tool_call_param.py).
Left out: the embeddings, score and rerank bodies BatchRequestInput also accepts (this copy refuses those urls),
the methods that turn a request into sampling parameters, and multimodal content parts other than text and images;
`request_id`'s random default and the logits-processor constructor type are simplified.
`return_token_ids` (added in vLLM 0.10.2, which our --return-tokens requests ask for) is declared as the later model
declares it. Checked again against vLLM's current request model (vllm/entrypoints/openai/run_batch.py and
chat_completion/protocol.py, read in December 2026), which differs in ways our lines already meet: `max_tokens` is
deprecated in favour of `max_completion_tokens` but still read; an empty `tools` list is refused (we leave `tools`
out when a row has none); `top_logprobs` may be -1 and must be an integer; an assistant message's
`reasoning_content` is read as `reasoning`. Batch lines for other urls than chat, embeddings, score and rerank are
answered with an error line, as this copy refuses them.
Types are spelt `X | Y` where vLLM writes Union and Optional. `logger.warning` for fields vLLM ignores is kept,
under the logger name vLLM uses, so tests can watch for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, Required

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from typing_extensions import TypedDict

logger = logging.getLogger("vllm.entrypoints.openai.protocol")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1  # torch.iinfo(torch.long)


# ----- openai-python: message params -------------------------------------------------------------------------------
class ChatCompletionContentPartTextParam(TypedDict, total=False):
    text: Required[str]
    type: Required[Literal["text"]]


class ImageURL(TypedDict, total=False):
    url: Required[str]
    detail: Literal["auto", "low", "high"]


class ChatCompletionContentPartImageParam(TypedDict, total=False):
    image_url: Required[ImageURL]
    type: Required[Literal["image_url"]]


class ChatCompletionContentPartRefusalParam(TypedDict, total=False):
    refusal: Required[str]
    type: Required[Literal["refusal"]]


OpenAIChatCompletionContentPartParam = ChatCompletionContentPartTextParam | ChatCompletionContentPartImageParam


class Function(TypedDict, total=False):
    arguments: Required[str]
    name: Required[str]


class ChatCompletionMessageToolCallParam(TypedDict, total=False):
    id: Required[str]
    function: Required[Function]
    type: Required[Literal["function"]]


class ChatCompletionDeveloperMessageParam(TypedDict, total=False):
    content: Required[str | Iterable[ChatCompletionContentPartTextParam]]
    role: Required[Literal["developer"]]
    name: str


class ChatCompletionSystemMessageParam(TypedDict, total=False):
    content: Required[str | Iterable[ChatCompletionContentPartTextParam]]
    role: Required[Literal["system"]]
    name: str


class ChatCompletionUserMessageParam(TypedDict, total=False):
    content: Required[str | Iterable[OpenAIChatCompletionContentPartParam]]
    role: Required[Literal["user"]]
    name: str


class Audio(TypedDict, total=False):
    id: Required[str]


class ChatCompletionAssistantMessageParam(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    audio: Audio | None
    content: str | Iterable[ChatCompletionContentPartTextParam | ChatCompletionContentPartRefusalParam] | None
    function_call: Function | None
    name: str
    refusal: str | None
    tool_calls: Iterable[ChatCompletionMessageToolCallParam]


class ChatCompletionToolMessageParam(TypedDict, total=False):
    content: Required[str | Iterable[ChatCompletionContentPartTextParam]]
    role: Required[Literal["tool"]]
    tool_call_id: Required[str]


class ChatCompletionFunctionMessageParam(TypedDict, total=False):
    content: Required[str | None]
    name: Required[str]
    role: Required[Literal["function"]]


OpenAIChatCompletionMessageParam = (
    ChatCompletionDeveloperMessageParam
    | ChatCompletionSystemMessageParam
    | ChatCompletionUserMessageParam
    | ChatCompletionAssistantMessageParam
    | ChatCompletionToolMessageParam
    | ChatCompletionFunctionMessageParam
)


# ----- vllm/entrypoints/chat_utils.py -------------------------------------------------------------------------------
ChatCompletionContentPartParam = OpenAIChatCompletionContentPartParam | ChatCompletionContentPartRefusalParam | str


class CustomChatCompletionMessageParam(TypedDict, total=False):
    """Enables custom roles in the Chat Completion API."""

    role: Required[str]
    content: str | list[ChatCompletionContentPartParam]
    name: str
    tool_call_id: str | None
    tool_calls: Iterable[ChatCompletionMessageToolCallParam] | None


ChatCompletionMessageParam = OpenAIChatCompletionMessageParam | CustomChatCompletionMessageParam


# ----- vllm/entrypoints/openai/protocol.py --------------------------------------------------------------------------
class OpenAIBaseModel(BaseModel):
    # OpenAI API does allow extra fields
    model_config = ConfigDict(extra="allow")

    # Cache class field names
    field_names: ClassVar[set[str] | None] = None

    @model_validator(mode="wrap")
    @classmethod
    def __log_extra_fields__(cls, data: Any, handler: Any) -> Any:
        result = handler(data)
        if not isinstance(data, dict):
            return result
        field_names = cls.field_names
        if field_names is None:
            field_names = set()
            for field_name, field in cls.model_fields.items():
                field_names.add(field_name)
                if alias := getattr(field, "alias", None):
                    field_names.add(alias)
            cls.field_names = field_names
        if any(k not in field_names for k in data):
            logger.warning(
                "The following fields were present in the request but ignored: %s", data.keys() - field_names
            )
        return result


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatCompletionToolsParam(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatCompletionNamedFunction(OpenAIBaseModel):
    name: str


class ChatCompletionNamedToolChoiceParam(OpenAIBaseModel):
    function: ChatCompletionNamedFunction
    type: Literal["function"] = "function"


class JsonSchemaResponseFormat(OpenAIBaseModel):
    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaResponseFormat | None = None


class ChatCompletionRequest(OpenAIBaseModel):
    # Ordered by official OpenAI API documentation
    messages: list[ChatCompletionMessageParam]
    model: str | None = None
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    presence_penalty: float | None = 0.0
    response_format: ResponseFormat | None = None
    seed: int | None = Field(None, ge=_LONG_MIN, le=_LONG_MAX)
    stop: str | list[str] | None = []
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[ChatCompletionToolsParam] | None = None
    tool_choice: Literal["none"] | Literal["auto"] | Literal["required"] | ChatCompletionNamedToolChoiceParam | None = (
        "none"
    )
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    include_reasoning: bool = True
    parallel_tool_calls: bool | None = False
    user: str | None = None
    # chat-completion-sampling-params
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float = 1.0
    stop_token_ids: list[int] | None = []
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: Annotated[int, Field(ge=1)] | None = None
    prompt_logprobs: int | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] = Field(default_factory=list)
    # chat-completion-extra-params
    echo: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | BaseModel | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structural_tag: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    priority: int = 0
    request_id: str = ""
    logits_processors: list[str | dict[str, Any]] | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None  # vLLM >= 0.10.2: generation and prompt ids in the reply (--return-tokens)
    cache_salt: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    vllm_xargs: dict[str, str | int | float] | None = None

    @model_validator(mode="before")
    @classmethod
    def validate_stream_options(cls, data: Any) -> Any:
        if data.get("stream_options") and not data.get("stream"):
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return data

    @model_validator(mode="before")
    @classmethod
    def check_logprobs(cls, data: Any) -> Any:
        if (prompt_logprobs := data.get("prompt_logprobs")) is not None:
            if data.get("stream") and prompt_logprobs > 0:
                raise ValueError("`prompt_logprobs` are not available when `stream=True`.")
            if prompt_logprobs < 0:
                raise ValueError("`prompt_logprobs` must be a positive value.")
        if (top_logprobs := data.get("top_logprobs")) is not None:
            if top_logprobs < 0:
                raise ValueError("`top_logprobs` must be a positive value.")
            if top_logprobs > 0 and not data.get("logprobs"):
                raise ValueError("when using `top_logprobs`, `logprobs` must be set to true.")
        return data

    @model_validator(mode="before")
    @classmethod
    def check_guided_decoding_count(cls, data: Any) -> Any:
        guide_count = sum(data.get(key) is not None for key in ("guided_json", "guided_regex", "guided_choice"))
        if guide_count > 1:
            raise ValueError(
                "You can only use one kind of guided decoding ('guided_json', 'guided_regex' or 'guided_choice')."
            )
        return data

    @model_validator(mode="before")
    @classmethod
    def check_tool_usage(cls, data: Any) -> Any:
        if "tool_choice" not in data and data.get("tools"):
            data["tool_choice"] = "auto"
        if "tool_choice" in data and data["tool_choice"] == "none":
            return data
        if "tool_choice" in data and data["tool_choice"] is not None:
            if "tools" not in data or data["tools"] is None:
                raise ValueError("When using `tool_choice`, `tools` must be set.")
            if data["tool_choice"] not in ["auto", "required"] and not isinstance(data["tool_choice"], dict):
                raise ValueError(
                    f"Invalid value for `tool_choice`: {data['tool_choice']}! "
                    'Only named tools, "none", "auto" or "required" are supported.'
                )
            if data["tool_choice"] == "required" and isinstance(data["tools"], list) and len(data["tools"]) == 0:
                data["tool_choice"] = "none"
                del data["tools"]
                return data
            if isinstance(data["tool_choice"], dict):
                function = data["tool_choice"].get("function")
                if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                    raise ValueError(f"Invalid value for `function`: `{function}` in `tool_choice`!")
                if not any(tool["function"]["name"] == function["name"] for tool in data["tools"]):
                    raise ValueError("The tool specified in `tool_choice` does not match any of the specified `tools`")
        return data

    @model_validator(mode="before")
    @classmethod
    def check_generation_prompt(cls, data: Any) -> Any:
        if data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data

    @model_validator(mode="before")
    @classmethod
    def check_cache_salt_support(cls, data: Any) -> Any:
        if data.get("cache_salt") is not None and (not isinstance(data["cache_salt"], str) or not data["cache_salt"]):
            raise ValueError("Parameter 'cache_salt' must be a non-empty string if provided.")
        return data


class BatchRequestInput(OpenAIBaseModel):
    """The per-line object of the batch input file."""

    custom_id: str
    method: str
    url: str
    body: ChatCompletionRequest

    @field_validator("body", mode="plain")
    @classmethod
    def check_type_for_url(cls, value: Any, info: ValidationInfo) -> Any:
        url: str = info.data["url"]
        if url == "/v1/chat/completions":
            return ChatCompletionRequest.model_validate(value)
        # vLLM goes on with /v1/embeddings, */score and */rerank, whose models this copy leaves out.
        raise ValueError(f"this copy of vLLM's BatchRequestInput reads only /v1/chat/completions bodies, not {url}")
