"""Agent output lines as task log lines (CONTRACT §5, §7 TaskLogLine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aicm.runner.stream_json import ParsedLine, RunSummary, parse_line, summarize_tool_input

SAMPLE = Path(__file__).parent / "fixtures" / "claude-stream-json-sample.jsonl"
SESSION_ID = "3f1c2a7e-9b4d-4e51-a0c2-6d8e2f7b1a90"
INVOICE = "/srv/aicm/workspaces/billing-api/billing/invoice.py"


def sample_lines() -> list[ParsedLine]:
    return [parse_line("stdout", raw) for raw in SAMPLE.read_text(encoding="utf-8").splitlines()]


def test_sample_lines_get_their_kinds_and_readable_texts() -> None:
    lines = sample_lines()

    assert [line.kind for line in lines] == [
        "system",
        "assistant",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "result",
    ]
    assert [line.text for line in lines] == [
        "session started (model claude-sonnet-4-5-20250929, cwd /srv/aicm/workspaces/billing-api)",
        "I'll start by looking at the failing test.",
        "Bash: pytest tests/test_invoice.py -x -q",
        "Tool error: F\nFAILED tests/test_invoice.py::test_total_rounding - AssertionError: 10.0 != 9.99\n"
        "1 failed in 0.21s",
        f"Edit: {INVOICE}",
        f"Tool result: The file {INVOICE} has been updated.",
        "Fixed: invoice totals now round to cents. The test passes.",
        "Fixed: invoice totals now round to cents. The test passes.",
    ]
    assert all(line.stream == "stdout" for line in lines)
    assert [line.data for line in lines] == [
        json.loads(raw) for raw in SAMPLE.read_text(encoding="utf-8").splitlines()
    ]


def test_summary_of_the_sample_has_session_cost_and_success() -> None:
    summary = RunSummary()

    for line in sample_lines():
        summary.feed(line)

    assert summary.session_id == SESSION_ID
    assert summary.cost_usd == 0.04217
    assert summary.is_error is False
    assert summary.has_result is True
    assert summary.result_text == "Fixed: invoice totals now round to cents. The test passes."
    assert summary.succeeded(0) is True
    assert summary.succeeded(1) is False
    assert summary.succeeded(None) is False


@pytest.mark.parametrize("raw", ["plain text", "", "   ", "{not json", '{"a": 1', "npm WARN deprecated x@1"])
def test_non_json_stdout_line_is_text(raw: str) -> None:
    assert parse_line("stdout", raw) == ParsedLine("stdout", "text", raw, None)


@pytest.mark.parametrize("raw", ["[1, 2]", "42", '"a string"', "null", "true"])
def test_json_that_is_not_an_object_is_text(raw: str) -> None:
    assert parse_line("stdout", raw) == ParsedLine("stdout", "text", raw, None)


def test_object_without_a_type_is_text_with_its_data() -> None:
    parsed = parse_line("stdout", '{"hello": "world"}')

    assert parsed == ParsedLine("stdout", "text", '{"hello": "world"}', {"hello": "world"})


def test_stderr_line_is_never_parsed() -> None:
    raw = '{"type": "result", "total_cost_usd": 9.0}'

    parsed = parse_line("stderr", raw)

    assert parsed == ParsedLine("stderr", "text", raw, None)
    summary = RunSummary()
    summary.feed(parsed)
    assert summary.cost_usd is None


def test_nan_and_infinity_are_not_json() -> None:
    assert parse_line("stdout", '{"type": "result", "total_cost_usd": NaN}').data is None


def test_error_result_with_cost_usd_only() -> None:
    summary = RunSummary()
    summary.feed(parse_line("stdout", '{"type":"system","subtype":"init","session_id":"s-1"}'))

    summary.feed(
        parse_line("stdout", '{"type":"result","subtype":"error_max_turns","is_error":true,"cost_usd":2}')
    )

    assert summary.is_error is True
    assert summary.cost_usd == 2.0
    assert summary.result_text is None
    assert summary.succeeded(0) is False


@pytest.mark.parametrize("cost", ["true", '"0.5"', "-1", "null", "[1]"])
def test_cost_that_is_not_a_non_negative_number_is_ignored(cost: str) -> None:
    summary = RunSummary()

    summary.feed(parse_line("stdout", f'{{"type":"result","is_error":false,"total_cost_usd":{cost}}}'))

    assert summary.cost_usd is None


def test_result_without_text_renders_its_subtype_and_errors() -> None:
    parsed = parse_line("stdout", '{"type":"result","subtype":"error_during_execution","errors":["boom"]}')

    assert parsed.text == "error_during_execution: boom"


def test_session_id_comes_from_init_else_from_a_later_line() -> None:
    summary = RunSummary()
    summary.feed(parse_line("stdout", '{"type":"result","session_id":"from-result"}'))
    assert summary.session_id == "from-result"

    summary.feed(parse_line("stdout", '{"type":"system","subtype":"init","session_id":"from-init"}'))
    summary.feed(parse_line("stdout", '{"type":"assistant","session_id":"other"}'))
    summary.feed(parse_line("stdout", '{"type":"system","subtype":"init","session_id":"--bad id"}'))

    assert summary.session_id == "from-init"


def test_assistant_blocks_are_joined_and_tool_uses_summarised() -> None:
    message = {
        "content": [
            {"type": "thinking", "thinking": "Let me think\nabout it"},
            {"type": "text", "text": "Two things."},
            {"type": "tool_use", "id": "t1", "name": "Grep", "input": {"pattern": "TODO", "path": "src"}},
            {"type": "tool_use", "id": "t2", "name": "TodoWrite", "input": {"todos": [{}, {}]}},
            {"type": "image", "source": {}},
        ]
    }

    parsed = parse_line("stdout", json.dumps({"type": "assistant", "message": message}))

    assert (
        parsed.text == "Thinking: Let me think …\nTwo things.\nGrep: TODO in src\nTodoWrite: 2 items\n[image]"
    )


@pytest.mark.parametrize(
    ("name", "tool_input", "summary"),
    [
        ("Bash", {"command": "pytest -q", "description": "Run tests"}, "Bash: pytest -q"),
        ("Bash", {"command": "cd app\nmake test"}, "Bash: cd app …"),
        ("Read", {"file_path": "app/main.py"}, "Read: app/main.py"),
        ("Write", {"file_path": "a.txt", "content": "x" * 5000}, "Write: a.txt"),
        ("WebFetch", {"url": "https://example.com", "prompt": "p"}, "WebFetch: https://example.com"),
        ("mcp__db__query", {"sql": "select 1"}, 'mcp__db__query: {"sql":"select 1"}'),
        ("Unknown", {}, "Unknown"),
        ("Bash", {"command": "x" * 500}, "Bash: " + "x" * 200 + " …"),
    ],
)
def test_tool_input_summaries(name: str, tool_input: dict, summary: str) -> None:
    assert summarize_tool_input(name, tool_input) == summary


def test_long_tool_result_is_summarised() -> None:
    output = "\n".join(f"line {n}" for n in range(100))
    user = {
        "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": output}]}
        ]
    }

    parsed = parse_line("stdout", json.dumps({"type": "user", "message": user}))

    assert parsed.text == "Tool result: line 0\nline 1\nline 2\nline 3\nline 4 …"


def test_other_types_and_system_subtypes() -> None:
    assert (
        parse_line("stdout", '{"type":"system","subtype":"compact_boundary"}').text
        == "system: compact_boundary"
    )
    raw = '{"type":"stream_event","event":{}}'
    assert parse_line("stdout", raw) == ParsedLine(
        "stdout", "stream_event", raw, {"type": "stream_event", "event": {}}
    )


def test_an_api_retry_line_says_which_attempt_when_and_why() -> None:
    raw = json.dumps(
        {
            "type": "system",
            "subtype": "api_retry",
            "attempt": 2,
            "max_retries": 10,
            "retry_delay_ms": 4000,
            "error_status": 529,
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "session_id": "s-1",
        }
    )
    parsed = parse_line("stdout", raw)
    assert (parsed.kind, parsed.data["attempt"]) == ("system", 2)
    assert parsed.text == "API request failed (529 overloaded_error: Overloaded); retry 2 of 10 in 4.0 s"


def test_an_api_retry_line_with_other_spellings_or_few_fields() -> None:
    spelled = {"type": "system", "subtype": "api_retry", "attempt": 1, "delay": 1.5, "error": "timeout"}
    assert parse_line("stdout", json.dumps(spelled)).text == "API request failed (timeout); retry 1 in 1.5 s"
    bare = {"type": "system", "subtype": "api_retry"}
    assert parse_line("stdout", json.dumps(bare)).text == "API request failed; retry"


def test_nul_and_lone_surrogates_are_made_storable() -> None:
    raw = r'{"type":"assistant","message":{"content":[{"type":"text","text":"a\u0000b\ud800c \ud83d\ude00 \\u0000"}]}}'

    parsed = parse_line("stdout", raw)

    assert parsed.text == "a\ufffdb\ufffdc \U0001f600 \\u0000"
    json.dumps(parsed.data).encode("utf-8")  # storable
    assert parse_line("stdout", "nul\x00here").text == "nul\ufffdhere"
