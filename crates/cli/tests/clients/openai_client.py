"""The official `openai` Python package against a running `verity serve`, unchanged.

    python openai_client.py http://127.0.0.1:PORT
"""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0)

models = client.models.list()
model = models.data[0].id
assert model, models

messages = [{"role": "user", "content": "What is the capital of France?"}]

# Chat, then the same request streamed: same text, usage in the last chunk.
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
text = chat.choices[0].message.content
assert text and chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0, chat.usage
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
)
chunks = list(stream)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens, chunks[-1]
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finish == [chat.choices[0].finish_reason], finish

# Log-probabilities of generated tokens.
lp = client.chat.completions.create(model=model, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
assert len(content) == lp.usage.completion_tokens, content
assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content), content
assert abs(content[0].logprob - content[0].top_logprobs[0].logprob) < 1e-6, "greedy picks the top token"

# Same seed, same sample; several choices.
a = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=1.0, seed=11)
b = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=1.0, seed=11)
assert a.choices[0].message.content == b.choices[0].message.content
n = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=1.0, seed=3, n=3)
assert [c.index for c in n.choices] == [0, 1, 2]

# JSON mode.
j = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give a JSON object with a key 'city' for the capital of France."}],
    response_format={"type": "json_object"},
    max_tokens=40,
    seed=1,
)
assert j.choices[0].message.content.lstrip().startswith("{"), j

# Legacy completions, with log-probabilities, echo and max_tokens 0.
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=2)
assert c.choices[0].text.startswith(" Paris"), c
assert len(c.choices[0].logprobs.token_logprobs) == 3
echo = client.completions.create(model=model, prompt="The capital of France is Paris", max_tokens=0, echo=True, logprobs=1)
lps = echo.choices[0].logprobs
assert echo.choices[0].text == "The capital of France is Paris", echo
assert lps.token_logprobs[0] is None and all(x is not None for x in lps.token_logprobs[1:]), lps
batch = client.completions.create(model=model, prompt=["Hello", "World"], max_tokens=2, temperature=0)
assert len(batch.choices) == 2
tokens = client.completions.create(model=model, prompt=[[504, 3575], [6403]], max_tokens=2, temperature=0)
assert len(tokens.choices) == 2

# Errors arrive as the client's typed exceptions.
try:
    client.chat.completions.create(model=model, messages=messages, temperature=7)
    raise AssertionError("temperature 7 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "temperature" in str(e), e
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 20000}])
    raise AssertionError("an over-long prompt was accepted")
except openai.BadRequestError as e:
    assert "context" in str(e), e

print("openai client: all checks passed")
