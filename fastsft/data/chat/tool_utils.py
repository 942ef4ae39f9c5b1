"""Tool-definition and function-call text per tool format.

A port of LLaMA-Factory 0.9.5's ``data/tool_utils.py``: the system-prompt text that describes
the available tools, and the assistant text of a function call, character for character. The
``tool_extractor`` half of LLaMA-Factory's classes parses model *outputs* at inference time and
has no use in a training-data pipeline, so it is not ported.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, NamedTuple

from fastsft.errors import ConfigError

__all__ = [
    "TOOL_FORMAT_NAMES",
    "FunctionCall",
    "ToolUtils",
    "get_tool_utils",
]


class FunctionCall(NamedTuple):
    """One call in an assistant's function message: the name and its JSON-encoded arguments."""

    name: str
    arguments: str


DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)

GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)

GLM4_MOE_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, output the function name and arguments within the following XML format:"
    "\n<tool_call>{{function-name}}"
    "\n<arg_key>{{arg-key-1}}</arg_key>"
    "\n<arg_value>{{arg-value-1}}</arg_value>"
    "\n<arg_key>{{arg-key-2}}</arg_key>"
    "\n<arg_value>{{arg-value-2}}</arg_value>"
    "\n...\n</tool_call>\n"
)

LLAMA3_TOOL_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    """Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. """
    "Do not use variables.\n\n{tool_text}"
)

MINIMAX_M1_TOOL_PROMPT = (
    "You are provided with these tools:\n<tools>\n{tool_text}</tools>\n\n"
    "If you need to call tools, please respond with <tool_calls></tool_calls> XML tags, and provide tool-name and "
    "json-object of arguments, following the format below:\n<tool_calls>\n"
    """{{"name": <tool-name-1>, "arguments": <args-json-object-1>}}\n...\n</tool_calls>"""
)

MINIMAX_M2_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more tools to assist with the user query.\n"
    "Here are the tools available in JSONSchema format:\n\n<tools>\n{tool_text}</tools>\n\n"
    "When making tool calls, use XML format to invoke tools and pass parameters:\n"
    """\n<minimax:tool_call>\n<invoke name="tool-name-1">\n<parameter name="param-key-1">param-value-1</parameter>\n"""
    """<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n</minimax:tool_call>"""
)

QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)

QWEN35_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>{tool_text}"
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: "
    "an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)

SEED_TOOL_PROMPT = (
    "system\nYou are Doubao, a helpful AI assistant. You may call one or more functions to assist with the user query."
    "Tool List:\nYou are authorized to use the following tools (described in JSON Schema format). Before performing "
    "any task, you must decide how to call them based on the descriptions and parameters of these tools.{tool_text}\n"
    "工具调用请遵循如下格式:\n<seed:tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>value_1"
    "</parameter>\n<parameter=example_parameter_2>This is the value for the second parameter\nthat can span\nmultiple "
    "lines</parameter>\n</function>\n</seed:tool_call>\n"
)

LING_TOOL_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)

LFM2_TOOL_PROMPT = "List of tools: <|tool_list_start|>{tool_text}<|tool_list_end|>"


def _today() -> str:
    """Today's date as the Llama 3 tool prompt writes it (LLaMA-Factory uses the wall clock too)."""
    return datetime.now().strftime("%d %b %Y")


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, indent=indent, ensure_ascii=False)


def _wrap_function(tool: dict[str, Any]) -> dict[str, Any]:
    """``{"type": "function", "function": tool}`` unless the tool is already wrapped that way."""
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


class ToolUtils(ABC):
    """Text of one tool format: tool definitions for the system prompt, function calls for replies."""

    @staticmethod
    @abstractmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        """The system-prompt text describing all the available tools."""

    @staticmethod
    @abstractmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        """The assistant text carrying all the function calls."""


class DefaultToolUtils(ToolUtils):
    """LLaMA-Factory's own ``Action: / Action Input:`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        tool_names = []
        for tool in tools:
            tool = tool.get("function", "") if tool.get("type") == "function" else tool
            param_text = ""
            for name, param in tool["parameters"]["properties"].items():
                required, enum, items = "", "", ""
                if name in tool["parameters"].get("required", []):
                    required = ", required"

                if param.get("enum", None):
                    enum = ", should be one of [{}]".format(", ".join(param["enum"]))

                if param.get("items", None):
                    items = ", where each item should be {}".format(param["items"].get("type", ""))

                param_text += "  - {name} ({type}{required}): {desc}{enum}{items}\n".format(
                    name=name,
                    type=param.get("type", ""),
                    required=required,
                    desc=param.get("description", ""),
                    enum=enum,
                    items=items,
                )

            tool_text += "> Tool Name: {name}\nTool Description: {desc}\nTool Args:\n{args}\n".format(
                name=tool["name"], desc=tool.get("description", ""), args=param_text
            )
            tool_names.append(tool["name"])

        return DEFAULT_TOOL_PROMPT.format(tool_text=tool_text, tool_names=", ".join(tool_names))

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        return "\n".join([f"Action: {name}\nAction Input: {arguments}" for name, arguments in functions])


class Gemma4ToolUtils(ToolUtils):
    """Gemma 4 declarations with ``<|"|>`` string markers."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        def format_parameters(properties: dict[str, Any]) -> str:
            parts: list[str] = []
            for name, schema in properties.items():
                item_parts: list[str] = []
                if schema.get("description"):
                    item_parts.append(f'description:<|"|>{schema["description"]}<|"|>')
                if schema.get("type"):
                    item_parts.append(f'type:<|"|>{str(schema["type"]).upper()}<|"|>')
                parts.append(f"{name}:{{{','.join(item_parts)}}}")

            return ",".join(parts)

        declarations: list[str] = []
        for tool in tools:
            function_data = tool.get("function", tool) if tool.get("type") == "function" else tool
            declaration = (
                f"declaration:{function_data['name']}"
                + "{"
                + f'description:<|"|>{function_data.get("description", "")}<|"|>'
            )

            params = function_data.get("parameters")
            if params:
                param_parts: list[str] = []
                if params.get("properties"):
                    param_parts.append(f"properties:{{{format_parameters(params['properties'])}}}")

                if params.get("required"):
                    required_text = ",".join(f'<|"|>{item}<|"|>' for item in params["required"])
                    param_parts.append(f"required:[{required_text}]")

                if params.get("type"):
                    param_parts.append(f'type:<|"|>{str(params["type"]).upper()}<|"|>')

                declaration += f",parameters:{{{','.join(param_parts)}}}"

            response_declaration = function_data.get("response")
            if response_declaration:
                response_parts: list[str] = []
                if response_declaration.get("description"):
                    response_parts.append(f'description:<|"|>{response_declaration["description"]}<|"|>')

                response_type = str(response_declaration.get("type", "")).upper()
                if response_type == "OBJECT":
                    response_parts.append(f'type:<|"|>{response_type}<|"|>')

                declaration += f",response:{{{','.join(response_parts)}}}"

            declarations.append(declaration + "}")

        return "\n".join(declarations)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        def format_argument(argument: Any, escape_keys: bool = True) -> str:
            if isinstance(argument, str):
                return f'<|"|>{argument}<|"|>'

            if isinstance(argument, bool):
                return "true" if argument else "false"

            if isinstance(argument, dict):
                items: list[str] = []
                for key in sorted(argument.keys()):
                    formatted_key = f'<|"|>{key}<|"|>' if escape_keys else str(key)
                    formatted_value = format_argument(argument[key], escape_keys=escape_keys)
                    items.append(f"{formatted_key}:{formatted_value}")
                return "{" + ",".join(items) + "}"

            if isinstance(argument, (list, tuple)):
                return (
                    "[" + ",".join(format_argument(item, escape_keys=escape_keys) for item in argument) + "]"
                )

            if argument is None:
                return "null"

            return str(argument)

        function_texts: list[str] = []
        for function in functions:
            try:
                parsed_arguments = json.loads(function.arguments)
            except (TypeError, json.JSONDecodeError):
                parsed_arguments = function.arguments

            call_text = f"<|tool_call>call:{function.name}" + "{"
            if isinstance(parsed_arguments, dict):
                args_text = []
                for key in sorted(parsed_arguments.keys()):
                    value_text = format_argument(parsed_arguments[key], escape_keys=False)
                    args_text.append(f"{key}:{value_text}")

                call_text += ",".join(args_text)
            elif isinstance(parsed_arguments, str):
                call_text += parsed_arguments
            else:
                call_text += format_argument(parsed_arguments, escape_keys=False)

            call_text += "}<tool_call|>"
            function_texts.append(call_text)

        return "".join(function_texts)


class GLM4ToolUtils(ToolUtils):
    """GLM-4 (ChatGLM) format; no parallel calls."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool = tool.get("function", "") if tool.get("type") == "function" else tool
            tool_text += "\n\n## {name}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。".format(
                name=tool["name"], body=_dumps(tool, indent=4)
            )

        return GLM4_TOOL_PROMPT.format(tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        if len(functions) > 1:
            raise ValueError("GLM-4 does not support parallel functions.")

        return f"{functions[0].name}\n{functions[0].arguments}"


class Llama3ToolUtils(ToolUtils):
    """Llama 3.x JSON tool calling with ``tools_in_user_message=False``."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool_text += _dumps(_wrap_function(tool), indent=4) + "\n\n"

        return LLAMA3_TOOL_PROMPT.format(date=_today(), tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_objects = [
            {"name": name, "parameters": json.loads(arguments)} for name, arguments in functions
        ]
        return _dumps(function_objects[0] if len(function_objects) == 1 else function_objects)


class MiniMaxM1ToolUtils(ToolUtils):
    """MiniMax-M1 ``<tool_calls>`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool = tool.get("function", "") if tool.get("type") == "function" else tool
            tool_text += _dumps(tool) + "\n"

        return MINIMAX_M1_TOOL_PROMPT.format(tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_texts = [
            _dumps({"name": func.name, "arguments": json.loads(func.arguments)}) for func in functions
        ]
        return "<tool_calls>\n" + "\n".join(function_texts) + "\n</tool_calls>"


class MiniMaxM2ToolUtils(ToolUtils):
    """MiniMax-M2 ``<invoke>`` XML format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool = tool.get("function", "") if tool.get("type") == "function" else tool
            tool_text += "<tool>" + _dumps(tool) + "</tool>\n"

        return MINIMAX_M2_TOOL_PROMPT.format(tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_texts = []
        for func in functions:
            prompt = f'<invoke name="{func.name}">'
            for key, value in json.loads(func.arguments).items():
                prompt += f'\n<parameter name="{key}">'
                prompt += (value if isinstance(value, str) else _dumps(value)) + "</parameter>"
            prompt += "\n</invoke>"
            function_texts.append(prompt)

        return "\n".join(function_texts)


class MistralToolUtils(ToolUtils):
    """Mistral v0.3 ``[AVAILABLE_TOOLS]`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        wrapped_tools = [_wrap_function(tool) for tool in tools]
        return "[AVAILABLE_TOOLS] " + _dumps(wrapped_tools) + "[/AVAILABLE_TOOLS]"

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        return _dumps([{"name": name, "arguments": json.loads(arguments)} for name, arguments in functions])


class QwenToolUtils(ToolUtils):
    """Qwen 2.5 / Qwen 3 ``<tools>`` / ``<tool_call>`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool_text += "\n" + _dumps(_wrap_function(tool))

        return QWEN_TOOL_PROMPT.format(tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_texts = [
            _dumps({"name": name, "arguments": json.loads(arguments)}) for name, arguments in functions
        ]
        return "\n".join([f"<tool_call>\n{text}\n</tool_call>" for text in function_texts])


class Qwen35ToolUtils(ToolUtils):
    """Qwen 3.5 ``<function=...>`` / ``<parameter=...>`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool = tool.get("function", tool) if tool.get("type") == "function" else tool
            tool_text += "\n" + _dumps(tool)

        return QWEN35_TOOL_PROMPT.format(tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_texts = []
        for func in functions:
            prompt = f"<tool_call>\n<function={func.name}>"
            for key, value in json.loads(func.arguments).items():
                prompt += f"\n<parameter={key}>"
                prompt += f"\n{value if isinstance(value, str) else _dumps(value)}\n</parameter>"
            prompt += "\n</function>\n</tool_call>"
            function_texts.append(prompt)

        return "\n".join(function_texts)


class GLM4MOEToolUtils(ToolUtils):
    """GLM-4.5 (MoE) ``<arg_key>`` / ``<arg_value>`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool_text += "\n" + _dumps(_wrap_function(tool))

        return GLM4_MOE_TOOL_PROMPT.format(tool_text=tool_text)

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_texts = []
        for name, arguments in functions:
            prompt = "\n<tool_call>" + name
            for key, value in json.loads(arguments).items():
                prompt += "\n<arg_key>" + key + "</arg_key>"
                prompt += (
                    "\n<arg_value>" + (value if isinstance(value, str) else _dumps(value)) + "</arg_value>"
                )
            function_texts.append(prompt)

        return "\n".join(function_texts)


class SeedToolUtils(ToolUtils):
    """Seed-OSS ``<seed:tool_call>`` format."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        return SEED_TOOL_PROMPT.format(tool_text="\n" + _dumps(tools))

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        function_texts = []
        for name, arguments in functions:
            prompt = "\n<seed:tool_call>\n<function=" + name
            for key, value in json.loads(arguments).items():
                prompt += "\n<parameter=" + key + ">"
                prompt += (value if isinstance(value, str) else _dumps(value)) + "</parameter>"
            prompt += "\n</function>\n</seed:tool_call>"
            function_texts.append(prompt)

        return "\n".join(function_texts)


class LingToolUtils(QwenToolUtils):
    """Ling v2: Qwen's call format, its own tool prompt with thinking switched off."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_text = ""
        for tool in tools:
            tool_text += "\n" + _dumps(_wrap_function(tool))

        return LING_TOOL_PROMPT.format(tool_text=tool_text) + "\n" + "detailed thinking off"


class LFM2ToolUtils(ToolUtils):
    """LFM2.5 Pythonic call syntax."""

    @staticmethod
    def tool_formatter(tools: list[dict[str, Any]]) -> str:
        tool_list = [tool.get("function", tool) if tool.get("type") == "function" else tool for tool in tools]
        return LFM2_TOOL_PROMPT.format(tool_text=_dumps(tool_list))

    @staticmethod
    def function_formatter(functions: list[FunctionCall]) -> str:
        calls = []
        for name, args_json in functions:
            kwargs_parts = []
            for key, value in json.loads(args_json).items():
                if isinstance(value, str):
                    kwargs_parts.append(f'{key}="{value}"')
                else:
                    kwargs_parts.append(f"{key}={_dumps(value)}")

            calls.append(f"{name}({', '.join(kwargs_parts)})")

        return f"<|tool_call_start|>[{', '.join(calls)}]<|tool_call_end|>"


TOOLS: dict[str, ToolUtils] = {
    "default": DefaultToolUtils(),
    "gemma4": Gemma4ToolUtils(),
    "glm4": GLM4ToolUtils(),
    "llama3": Llama3ToolUtils(),
    "lfm2": LFM2ToolUtils(),
    "minimax1": MiniMaxM1ToolUtils(),
    "minimax2": MiniMaxM2ToolUtils(),
    "mistral": MistralToolUtils(),
    "qwen": QwenToolUtils(),
    "qwen3_5": Qwen35ToolUtils(),
    "glm4_moe": GLM4MOEToolUtils(),
    "seed_oss": SeedToolUtils(),
    "ling": LingToolUtils(),
}

TOOL_FORMAT_NAMES: tuple[str, ...] = tuple(TOOLS)


def get_tool_utils(name: str) -> ToolUtils:
    """The tool format called ``name``; ``ConfigError`` listing the valid names otherwise."""
    tool_utils = TOOLS.get(name)
    if tool_utils is None:
        raise ConfigError(f"unknown tool format '{name}' (valid: {', '.join(TOOL_FORMAT_NAMES)})")

    return tool_utils
