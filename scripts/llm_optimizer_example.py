"""The LLM optimizer's two caches, with @cached and a fake model.

* prompt cache (TTL 3600 s): a rendered prompt per (template, variables);
* response cache (TTL 300 s): the model's answer per (prompt, model,
  temperature), with None (the model refused) cached for 30 s only.

    python scripts/llm_optimizer_example.py                       # memory://, no Redis
    python scripts/llm_optimizer_example.py --redis-url redis://127.0.0.1:6380/0

It prints what ran and what came from the cache, then the health endpoint's
answer. Exit 0 when every check held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from resync_hierarchy import CacheHierarchy, cached, health_response

TEMPLATES = {
    "summarise": "Summarise for a {audience} reader, in {words} words:\n\n{text}",
}


def build(url: str) -> tuple[CacheHierarchy, Any, Any, dict[str, int]]:
    """Both caches in one hierarchy (one namespace), two decorated functions."""
    cache = CacheHierarchy.from_url(url, namespace="llm-optimizer")
    model_calls = {"render": 0, "model": 0}

    @cached(cache, ttl=3600, name="llm.prompt", version=1)
    async def render_prompt(template: str, variables: dict[str, Any]) -> str:
        model_calls["render"] += 1
        return TEMPLATES[template].format(**variables)

    @cached(cache, ttl=300, negative_ttl=30, name="llm.response", version=1)
    async def complete(prompt: str, model: str = "small-1", temperature: float = 0.0) -> Any:
        model_calls["model"] += 1
        await asyncio.sleep(0.05)  # the fake model's latency
        if "forbidden" in prompt:
            return None  # a refusal: cached for negative_ttl only
        return {"model": model, "text": f"[{model}] {prompt[:40]}...", "tokens": len(prompt) // 4}

    return cache, render_prompt, complete, model_calls


async def run(url: str) -> int:
    cache, render_prompt, complete, calls = build(url)
    failures: list[str] = []

    def check(condition: bool, what: str) -> None:
        print(("ok    " if condition else "FAIL  ") + what)
        if not condition:
            failures.append(what)

    async with cache:
        await cache.clear()  # a clean demo namespace
        article = "Redis is an in-memory data store. " * 300  # ~10 kB
        variables = {"audience": "busy", "words": 20, "text": article}
        prompt = await render_prompt("summarise", variables)
        again = await render_prompt("summarise", dict(reversed(variables.items())))
        check(prompt == again and calls["render"] == 1, "prompt rendered once (dict order ignored)")
        key = complete.key_for(prompt)
        check(len(key) < 100, f"a 10 kB prompt gives a short key: {key}")

        answers = await asyncio.gather(*(complete(prompt) for _ in range(50)))
        check(calls["model"] == 1, "50 concurrent identical requests: the model ran once")
        check(all(a == answers[0] for a in answers), "all 50 got the same answer")
        await complete(prompt, model="small-1", temperature=0.0)
        check(calls["model"] == 1, "defaults spelled out: same key, cache hit")
        await complete(prompt, temperature=0.7)
        check(calls["model"] == 2, "another temperature: another key, the model ran")
        check(await complete("a forbidden request") is None, "a refusal returns None")
        await complete("a forbidden request")
        check(calls["model"] == 3, "the refusal is cached (for 30 s)")
        fresh = await complete.refresh(prompt)
        check(calls["model"] == 4 and fresh == answers[0], "refresh() re-ran and overwrote")
        check(await complete.invalidate(prompt) is True, "invalidate() removed the answer")
        print(f"stats: {complete.stats()}")

        status, body = await health_response(cache)
        print(f"GET /health/ready -> {status} {json.dumps({'status': body['status']})}")
        check(status == 200, "readiness 200")
        status, _ = await health_response(cache, probe="liveness")
        check(status == 200, "liveness 200")
    status, body = await health_response(cache)
    check(status == 503, f"after shutdown: readiness {status} ({body.get('reason')})")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="memory://", help="default: memory:// (no Redis)")
    args = parser.parse_args()
    return asyncio.run(run(args.redis_url))


if __name__ == "__main__":
    sys.exit(main())
