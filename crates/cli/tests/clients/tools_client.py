"""Tool calling, structured output and the Responses API through the official `openai`
package and an `openai-agents` agent, unchanged, against `verity serve` (the default model).
Every tool call's arguments are validated against the tool's schema with `jsonschema`.

usage: python tools_client.py BASE_URL"""
import json
import sys

import jsonschema
from openai import OpenAI
from pydantic import BaseModel, Field

base = sys.argv[1].rstrip("/") + "/v1"
client = OpenAI(base_url=base, api_key="unused")
MODEL = "smollm2"

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


def valid_call(name, arguments):
    check(name in SCHEMAS, f"unknown tool {name}")
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def run_tool(name, args):
    if name == "add":
        return str(args["a"] + args["b"])
    return json.dumps({"city": args["city"], "temperature": 22, "unit": args["unit"], "sky": "clear"})


# 1. A full round trip, not streamed: required call -> tool result -> final answer.
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
# Up to 8 parallel calls (the grammar's bound; this small model writes all 8): room for them,
# so the answer ends with the grammar rather than at max_tokens (which would say "length").
r = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=400)
choice = r.choices[0]
check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason}")
calls = choice.message.tool_calls
check(calls and all(c.type == "function" and c.id for c in calls), f"tool_calls {calls}")
messages.append(choice.message.model_dump(exclude_none=True))
for c in calls:
    args = valid_call(c.function.name, c.function.arguments)
    messages.append({"role": "tool", "tool_call_id": c.id, "content": run_tool(c.function.name, args)})
final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=60)
check(final.choices[0].message.content and not final.choices[0].message.tool_calls, f"final answer {final.choices[0].message}")
print("round trip:", [(c.function.name, c.function.arguments) for c in calls], "->", final.choices[0].message.content[:60])

# 2. Streamed, with a named tool: deltas carry index, id and name first, then arguments.
stream = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "What is 17 plus 25?"}], tools=TOOLS,
    tool_choice={"type": "function", "function": {"name": "add"}}, temperature=0, max_tokens=100, stream=True,
)
acc, finish = {}, None
for chunk in stream:
    if not chunk.choices:
        continue
    d = chunk.choices[0].delta
    for tc in d.tool_calls or []:
        slot = acc.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
        if tc.id:
            check(slot["id"] is None and not slot["arguments"], "id and name come before the arguments")
            slot["id"] = tc.id
        if tc.function and tc.function.name:
            slot["name"] += tc.function.name
        if tc.function and tc.function.arguments:
            slot["arguments"] += tc.function.arguments
    finish = chunk.choices[0].finish_reason or finish
check(finish == "tool_calls", f"streamed finish_reason {finish}")
check(len(acc) >= 1 and all(s["name"] == "add" for s in acc.values()), f"named tool {acc}")
for s in acc.values():
    valid_call(s["name"], s["arguments"])
print("streamed named call:", acc)

# 3. Parallel calls: a conversation with two calls answered together, then parallel_tool_calls
#    false keeps one call per answer.
msgs = [
    {"role": "user", "content": "Weather in Paris and in Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Rome", "unit": "celsius"})}},
    ]},
    {"role": "tool", "tool_call_id": "call_a", "content": run_tool("get_weather", {"city": "Paris", "unit": "celsius"})},
    {"role": "tool", "tool_call_id": "call_b", "content": run_tool("get_weather", {"city": "Rome", "unit": "celsius"})},
]
r = client.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, temperature=0, max_tokens=60)
check(r.choices[0].message.content or r.choices[0].message.tool_calls, "an answer after parallel results")
r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris and Rome?"}], tools=TOOLS,
                                   tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=200)
check(len(r.choices[0].message.tool_calls) == 1, f"parallel_tool_calls=false: {r.choices[0].message.tool_calls}")
r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris and Rome? Call the tool once per city."}],
                                   tools=TOOLS, tool_choice="required", parallel_tool_calls=True, temperature=0, max_tokens=300)
for c in r.choices[0].message.tool_calls:
    valid_call(c.function.name, c.function.arguments)
print("parallel allowed:", len(r.choices[0].message.tool_calls), "call(s)")

# 4. tool_choice none: never a call.
r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=TOOLS,
                                   tool_choice="none", temperature=0, max_tokens=40)
check(not r.choices[0].message.tool_calls and r.choices[0].finish_reason != "tool_calls", "tool_choice none")


# 5. Structured output with a pydantic model.
class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)  # bounded: a tiny model may run on digits


parsed = client.chat.completions.parse(
    model=MODEL, messages=[{"role": "user", "content": "Describe Paris as JSON."}], response_format=City, temperature=0, max_tokens=100,
)
check(isinstance(parsed.choices[0].message.parsed, City), f"parse: {parsed.choices[0].message}")
print("parsed:", parsed.choices[0].message.parsed)

# 6. Responses API: tools, the call's output through previous_response_id, streaming.
RTOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER, "strict": True}]
r1 = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=RTOOLS, tool_choice="required", temperature=0, max_output_tokens=200)
fc = [o for o in r1.output if o.type == "function_call"]
check(fc, f"responses function_call: {r1.output}")
args = valid_call(fc[0].name, fc[0].arguments)
r2 = client.responses.create(
    model=MODEL, previous_response_id=r1.id, tools=RTOOLS, tool_choice="none", temperature=0, max_output_tokens=60,
    input=[{"type": "function_call_output", "call_id": fc[0].call_id, "output": run_tool("get_weather", args)}],
)
check(r2.status in ("completed", "incomplete") and r2.output_text, f"responses final: {r2.output}")
print("responses:", fc[0].name, fc[0].arguments, "->", r2.output_text[:60])
kinds = []
with client.responses.stream(model=MODEL, input="Weather in Rome?", tools=RTOOLS, tool_choice="required", temperature=0, max_output_tokens=200) as s:
    for ev in s:
        kinds.append(ev.type)
    done = s.get_final_response()
check("response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed", f"stream events {kinds}")
for o in done.output:
    if o.type == "function_call":
        valid_call(o.name, o.arguments)

# 7. An agent from openai-agents with a function tool (it uses the Responses API).
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

set_tracing_disabled(True)
called = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    called.append(city)
    return f"22 degrees and clear in {city}"


agent = Agent(
    name="weather",
    instructions="Answer weather questions with the get_weather tool.",
    tools=[get_weather],
    model=OpenAIResponsesModel(model=MODEL, openai_client=__import__("openai").AsyncOpenAI(base_url=base, api_key="unused")),
    model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=200),
    # A 135M model keeps calling tools when left to choose: the run ends with the tool's answer.
    tool_use_behavior="stop_on_first_tool",
)
result = Runner.run_sync(agent, "What's the weather in Paris?", max_turns=4)
check(called, "the agent called its tool")
check(result.final_output == f"22 degrees and clear in {called[0]}", f"agent output {result.final_output!r}")
print("agent:", called, "->", result.final_output[:60])

print(f"all checks passed ({checks})")
