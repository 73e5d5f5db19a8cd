"""Concept generation through an OpenAI-compatible chat endpoint (Label-free CBM style): per class, ask
for its visual features, its superclasses and its usual surroundings; parse and de-duplicate the lists."""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from cbmctl.concepts import normalise
from cbmctl.errors import CbmctlError

PROMPTS = {
    "features": "List the most important visual features for recognising a \"{}\" in a photo. "
                "Answer with one short phrase per line, no numbering.",
    "superclasses": "Give the broader categories that a \"{}\" belongs to. "
                    "Answer with one short phrase per line, no numbering.",
    "surroundings": "List the things most commonly seen around a \"{}\" in a photo. "
                    "Answer with one short phrase per line, no numbering.",
}


@dataclass
class Endpoint:
    base_url: str
    api_key: str | None
    model: str
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0

    @classmethod
    def from_options(cls, base_url=None, api_key=None, model=None, timeout=30.0, retries=3, backoff=1.0):
        base_url = base_url or os.environ.get("CBMCTL_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise CbmctlError("no chat endpoint configured: pass --base-url (or set OPENAI_BASE_URL), plus "
                              "--api-key / OPENAI_API_KEY if it needs one")
        return cls(base_url.rstrip("/"), api_key or os.environ.get("OPENAI_API_KEY"),
                   model or os.environ.get("CBMCTL_LLM_MODEL") or "gpt-4o-mini", timeout, retries, backoff)


@dataclass
class GenerationResult:
    concepts: list[str]
    per_class: dict[str, list[str]] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (class, prompt kind, reason)


class AnswerError(Exception):
    pass


def ask(endpoint: Endpoint, prompt: str) -> str:
    """One chat completion; retried (with backoff) on timeouts, connection errors, 429/5xx and malformed
    answers, at most `endpoint.retries` times."""
    body = json.dumps({"model": endpoint.model, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    last = "no attempt"
    for attempt in range(endpoint.retries):
        if attempt:
            time.sleep(endpoint.backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(f"{endpoint.base_url}/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
            content = payload["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise AnswerError("content is not text")
            return content
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
            if error.code in (400, 401, 403, 404):
                raise CbmctlError(f"{endpoint.base_url} answered HTTP {error.code} ({error.reason}); "
                                  "check --base-url, --api-key and --llm-model") from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as error:
            last = f"timed out after {endpoint.timeout:g} s" if "timed out" in str(error) else f"{error}"
        except (ValueError, KeyError, IndexError, TypeError, AnswerError) as error:
            last = f"malformed answer ({type(error).__name__}: {str(error)[:60]})"
    raise AnswerError(f"{last} after {endpoint.retries} attempts")


def parse_answer(text: str, max_words: int = 6) -> list[str]:
    """Lines of an answer as concepts: bullets and numbering stripped, lower-cased, trailing punctuation
    removed, over-long lines and sentences dropped."""
    concepts = []
    for line in text.splitlines():
        item, previous = line, None
        while item != previous:  # "- 2. Long tail." has two markers
            previous, item = item, re.sub(r"^\s*(?:[-*•]+|\d+[.)]|[a-z][.)])\s+", "", item)
        item = item.strip().strip(".,;:").strip()
        item = re.sub(r"\s+", " ", item).lower()
        if item and len(item.split()) <= max_words and not item.endswith("?"):
            concepts.append(item)
    return concepts


def generate(classes: list[str], endpoint: Endpoint, progress=None) -> GenerationResult:
    """Ask the endpoint about every class; concepts are de-duplicated across classes, in first-seen order."""
    result = GenerationResult([])
    seen = set()
    for name in classes:
        found = []
        for kind, template in PROMPTS.items():
            try:
                found.extend(parse_answer(ask(endpoint, template.format(name))))
            except AnswerError as error:
                result.failures.append((name, kind, str(error)))
            if progress:
                progress()
        result.per_class[name] = found
        for concept in found:
            if normalise(concept) not in seen:
                seen.add(normalise(concept))
                result.concepts.append(concept)
    if not result.concepts:
        reason = result.failures[0][2] if result.failures else "empty answers"
        raise CbmctlError(f"the endpoint gave no usable concepts ({reason})")
    return result
