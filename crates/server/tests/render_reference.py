"""Render OpenAI chat requests through chat templates with transformers, as a user of
transformers would: tool calls' arguments as dicts, null content as "", tool results with their call's id and
name. Reads [{"template": path, "bos": .., "eos": .., "request": {...}}] on stdin, prints
the rendered prompts (a JSON list; an entry is {"error": ...} where the template raised).
Run by crates/server/tests/tool_templates.rs with the clients venv's Python."""
import json
import sys

from transformers.utils.chat_template_utils import render_jinja_template


def to_transformers(messages):
    names = {}
    out = []
    for m in messages:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""  # as verity (and llama.cpp) pass a call's null content
        if m.get("role") == "developer":
            m["role"] = "system"
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = c["function"]
                args = json.loads(f["arguments"]) if isinstance(f.get("arguments"), str) else f.get("arguments", {})
                names[c["id"]] = f["name"]
                calls.append({"id": c["id"], "type": "function", "function": {"name": f["name"], "arguments": args}})
            m["tool_calls"] = calls
        if m.get("role") == "tool":
            m["name"] = names[m["tool_call_id"]]
        out.append(m)
    return out


results = []
for case in json.load(sys.stdin):
    template = open(case["template"], encoding="utf-8").read()
    req = case["request"]
    tools = req.get("tools")
    if req.get("tool_choice") == "none":
        tools = None
    try:
        rendered = render_jinja_template(
            conversations=[to_transformers(req["messages"])],
            tools=tools,
            chat_template=template,
            add_generation_prompt=True,
            bos_token=case["bos"],
            eos_token=case["eos"],
        )
        if isinstance(rendered, tuple):
            rendered = rendered[0]
        if isinstance(rendered, list):
            rendered = rendered[0]
        results.append({"text": rendered})
    except Exception as e:  # the template raised: both sides should
        results.append({"error": f"{type(e).__name__}: {e}"})
print(json.dumps(results))
