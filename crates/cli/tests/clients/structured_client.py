"""The official `openai` package's structured outputs against `verity serve`, unchanged:
`chat.completions.parse` with a Pydantic model (the client turns it into a strict JSON
Schema and parses the answer back into the model), a raw `json_schema` response format,
and the Responses API's `text.format`.

    python structured_client.py http://127.0.0.1:PORT
"""
import json
import sys
from typing import List, Literal, Optional

import openai
from pydantic import BaseModel, Field

base = sys.argv[1]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0)
model = client.models.list().data[0].id


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=20)


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    pets: List[Pet] = Field(max_length=3)
    nickname: Optional[str] = Field(max_length=15)


for seed in range(3):
    done = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Invent a person with pets."}],
        response_format=Person,
        temperature=1.0,
        seed=seed,
        max_tokens=300,
    )
    choice = done.choices[0]
    assert choice.finish_reason == "stop", choice
    person = choice.message.parsed
    assert isinstance(person, Person), choice
    assert 0 <= person.age <= 120 and len(person.pets) <= 3, person

raw = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Pick a number."}],
    response_format={
        "type": "json_schema",
        "json_schema": {"name": "pick", "strict": True, "schema": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
            "required": ["n"], "additionalProperties": False}},
    },
    temperature=1.0,
    seed=4,
)
n = json.loads(raw.choices[0].message.content)["n"]
assert 1 <= n <= 9, raw

# A schema feature the server cannot enforce is a 400 naming it.
try:
    client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "u", "schema": {"type": "array", "uniqueItems": True}}},
    )
    raise AssertionError("uniqueItems was accepted")
except openai.BadRequestError as e:
    assert "uniqueItems" in str(e), e

# The Responses API's text.format.
r = client.responses.create(
    model=model,
    input="Name a color.",
    text={"format": {"type": "json_schema", "name": "color", "strict": True, "schema": {
        "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"], "additionalProperties": False}}},
    temperature=1.0,
)
assert json.loads(r.output_text)["color"] in ("red", "green", "blue"), r.output_text

print("all checks passed")
