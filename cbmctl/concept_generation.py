"""Concept generation through an OpenAI-compatible chat endpoint (Label-free CBM style): per class, ask
for its visual features, its superclasses and its usual surroundings; parse and de-duplicate the lists.

The endpoint and its answers are untrusted. Requests go through httpx with these bounds:
* the API key only ever goes to the --base-url's origin: a redirect to the same origin is followed (at most
  MAX_REDIRECTS times), a redirect to another scheme, host or port is refused as an error, so that neither
  the key nor the prompts reach a host the user did not name;
* each attempt must finish (connect, wait, read the whole answer) within `timeout` seconds: an asyncio
  deadline over the attempt, which a server trickling one byte at a time cannot stretch;
* an answer over `max_answer_bytes` is refused from its Content-Length, or as soon as that much arrived;
* a compressed answer (Content-Encoding gzip, br, ...) is refused unread: only identity is asked for, and
  the raw bytes are read, so memory stays bounded by the cap whatever the server sends;
* at most `retries` attempts with exponential backoff, on timeouts, connection errors, 429/5xx and
  malformed answers; a request that still fails is reported and skipped.
Answers are cleaned before they become concepts: control characters are stripped, lines over
MAX_LINE_CHARS and lines starting with '#' (a concept file reads those as comments) are dropped, and at
most MAX_PHRASES_PER_ANSWER phrases are kept, each change with a warning."""
from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, field

from cbmctl.errors import CbmctlError
from cbmctl.names import normalise
from cbmctl.sanitize import has_control, safe_text, strip_control

PROMPTS = {
    "features": "List the most important visual features for recognising a \"{}\" in a photo. "
                "Answer with one short phrase per line, no numbering.",
    "superclasses": "Give the broader categories that a \"{}\" belongs to. "
                    "Answer with one short phrase per line, no numbering.",
    "surroundings": "List the things most commonly seen around a \"{}\" in a photo. "
                    "Answer with one short phrase per line, no numbering.",
}
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # a chat answer of a few phrases is a few KB
MAX_LINE_CHARS = 100  # a phrase of at most six words; anything longer is not a concept
MAX_PHRASES_PER_ANSWER = 100  # a list of features is a dozen lines; 4 MB of them would swamp the filter
MAX_REDIRECTS = 3
FATAL_STATUS = (400, 401, 403, 404)  # configuration errors: retrying or asking for other classes won't help
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass
class Endpoint:
    base_url: str
    api_key: str | None
    model: str
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    max_answer_bytes: int = MAX_ANSWER_BYTES

    def __post_init__(self):
        import httpx
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as error:
            raise CbmctlError(f"`base_url` {self.base_url!r} is not a URL ({safe_text(error)})") from None
        if url.scheme not in DEFAULT_PORTS or not url.host or not 0 < (url.port or 80) < 65536:
            raise CbmctlError(f"`base_url` {self.base_url!r}: expected http(s)://host[:port]/path")
        if self.api_key is not None and not re.fullmatch(r"[\x21-\x7e]+", self.api_key):
            # an HTTP header carries printable ASCII only; anything else is a pasting mistake
            raise CbmctlError("the API key holds spaces, control or non-ASCII characters; check `api_key` / "
                              "OPENAI_API_KEY")
        if not self.timeout > 0:
            raise CbmctlError(f"the request timeout must be positive, not {self.timeout}")

    @classmethod
    def from_options(cls, base_url=None, api_key=None, model=None, timeout=30.0, retries=3, backoff=1.0):
        base_url = base_url or os.environ.get("CBMCTL_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise CbmctlError("no chat endpoint configured: pass `base_url` (or set OPENAI_BASE_URL), plus "
                              "`api_key` / OPENAI_API_KEY if it needs one")
        return cls(base_url.rstrip("/"), api_key or os.environ.get("OPENAI_API_KEY"),
                   model or os.environ.get("CBMCTL_LLM_MODEL") or "gpt-4o-mini", timeout, retries, backoff)

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    def sends_key_in_clear(self) -> bool:
        """True when the key would cross the network unencrypted (http to a host other than this one)."""
        import httpx
        url = httpx.URL(self.base_url)
        return bool(self.api_key) and url.scheme == "http" and url.host not in ("localhost", "127.0.0.1", "::1")


@dataclass
class GenerationResult:
    concepts: list[str]
    per_class: dict[str, list[str]] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (class, prompt kind, reason)
    warnings: list[str] = field(default_factory=list)  # what was changed or dropped in the answers


class AnswerError(Exception):
    """One request failed for good (after its retries); the others go on."""


class _Retry(Exception):
    """This attempt failed in a way another attempt may not."""


def _origin(url) -> tuple:
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def _content(payload: bytes) -> str:
    """The text of an OpenAI-style answer (`choices[0].message.content`); anything else is malformed."""
    try:
        answer = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise _Retry(f"malformed answer (not JSON: {safe_text(str(error)[:60])})") from None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        raise _Retry("malformed answer (no choices)")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _Retry("malformed answer (choices[0].message.content is not text)")
    return content


def _refuse_compressed(response) -> None:
    """Only what was asked for is read: `Accept-Encoding: identity`. A compressed answer is refused before a
    byte of it is decoded, since a gzip or brotli body of a few KB can unpack to gigabytes; the raw bytes
    are read instead of httpx's decoded stream, so no decoder ever runs."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise AnswerError(f"answer compressed with {safe_text(encoding)[:40]!r}, which was not asked for "
                          "(Accept-Encoding: identity): refused unread")


async def _attempt(client, endpoint: Endpoint, body: bytes, headers: dict) -> str:
    """One POST (plus same-origin redirects), its answer read within endpoint.max_answer_bytes."""
    import httpx
    url = httpx.URL(endpoint.url)
    for _ in range(MAX_REDIRECTS + 1):
        async with client.stream("POST", url, content=body, headers=headers) as response:
            if response.has_redirect_location:
                target = url.join(response.headers["location"])
                if _origin(target) != _origin(url):
                    shown = safe_text(str(target.copy_with(query=None, fragment=None)))[:200]
                    raise CbmctlError(f"{endpoint.base_url} redirected to {shown}, another origin: not followed, "
                                      "so the API key and prompts are not sent there; pass that URL as "
                                      "`base_url` if you trust it")
                url = target
                continue
            if response.status_code in FATAL_STATUS:
                raise CbmctlError(f"{endpoint.base_url} answered HTTP {response.status_code} "
                                  f"({safe_text(response.reason_phrase)[:80]}); check `base_url`, `api_key` "
                                  "and `llm_model`")
            if response.status_code >= 300:
                raise _Retry(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > endpoint.max_answer_bytes:
                raise AnswerError(f"answer of {int(declared)} bytes refused (limit {endpoint.max_answer_bytes})")
            _refuse_compressed(response)
            payload = bytearray()
            async for chunk in response.aiter_raw():
                payload += chunk
                if len(payload) > endpoint.max_answer_bytes:
                    raise AnswerError(f"answer over {endpoint.max_answer_bytes} bytes refused")
            return _content(bytes(payload))
    raise _Retry(f"more than {MAX_REDIRECTS} redirects")


async def _ask(client, endpoint: Endpoint, prompt: str) -> str:
    """One chat completion; retried (with backoff) on timeouts, connection errors, 429/5xx and malformed
    answers, at most `endpoint.retries` attempts in all, each within `endpoint.timeout` seconds."""
    import httpx
    body = json.dumps({"model": endpoint.model, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    # identity: the size limit then bounds what is sent, not only what it unpacks to
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    last = "no attempt"
    for attempt in range(endpoint.retries):
        if attempt:
            await asyncio.sleep(endpoint.backoff * 2 ** (attempt - 1))
        try:
            return await asyncio.wait_for(_attempt(client, endpoint, body, headers), endpoint.timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            last = f"timed out after {endpoint.timeout:g} s"
        except (httpx.HTTPError, OSError) as error:  # connection, protocol and decoding errors alike
            last = f"request failed ({type(error).__name__}: {safe_text(str(error))[:80]})"
        except _Retry as error:
            last = str(error)
    raise AnswerError(f"{last} after {endpoint.retries} attempts")


def _run(coroutine):
    """Run a coroutine to completion from synchronous code, also when an event loop already runs in this
    thread (a notebook): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _client(endpoint: Endpoint):
    import httpx
    return httpx.AsyncClient(timeout=httpx.Timeout(endpoint.timeout), follow_redirects=False)


def ask(endpoint: Endpoint, prompt: str) -> str:
    """One chat completion, with the bounds of the module docstring."""
    async def one():
        async with _client(endpoint) as client:
            return await _ask(client, endpoint, prompt)
    return _run(one())


def parse_answer(text: str, max_words: int = 6, notes: list[str] | None = None) -> list[str]:
    """Lines of an answer as concepts: bullets and numbering stripped, lower-cased, trailing punctuation
    removed, sentences dropped. Control characters are stripped; lines over MAX_LINE_CHARS and lines that
    start with '#' are dropped, and phrases beyond MAX_PHRASES_PER_ANSWER; each of these is counted in
    `notes` (when given) as one line of text."""
    concepts = []
    counts = {"control": 0, "long": 0, "comment": 0}
    for line in text.splitlines():
        item = re.sub(r"\s+", " ", line)
        if has_control(item):
            counts["control"] += 1
            item = strip_control(item)
        previous = None
        while item != previous:  # "- 2. Long tail." has two markers
            previous, item = item, re.sub(r"^\s*(?:[-*•]+|\d+[.)]|[a-z][.)])\s+", "", item)
        item = re.sub(r"\s+", " ", item.strip().strip(".,;:").strip()).lower()
        if len(item) > MAX_LINE_CHARS:
            counts["long"] += 1
        elif item.startswith("#"):
            counts["comment"] += 1
        elif item and len(item.split()) <= max_words and not item.endswith("?"):
            concepts.append(item)
    if len(concepts) > MAX_PHRASES_PER_ANSWER:
        counts["many"] = len(concepts) - MAX_PHRASES_PER_ANSWER
        concepts = concepts[:MAX_PHRASES_PER_ANSWER]
    if notes is not None:
        if counts.get("many"):
            notes.append(f"{counts['many']} phrase(s) beyond the first {MAX_PHRASES_PER_ANSWER} ignored")
        if counts["control"]:
            notes.append(f"control characters stripped from {counts['control']} line(s)")
        if counts["long"]:
            notes.append(f"{counts['long']} line(s) over {MAX_LINE_CHARS} characters dropped")
        if counts["comment"]:
            notes.append(f"{counts['comment']} line(s) starting with '#' dropped (a concept file reads them "
                         "as comments)")
    return concepts


def generate(classes: list[str], endpoint: Endpoint, progress=None) -> GenerationResult:
    """Ask the endpoint about every class; concepts are de-duplicated across classes, in first-seen order."""
    return _run(_generate(classes, endpoint, progress))


async def _generate(classes: list[str], endpoint: Endpoint, progress) -> GenerationResult:
    result = GenerationResult([])
    seen = set()
    async with _client(endpoint) as client:
        for name in classes:
            found = []
            for kind, template in PROMPTS.items():
                try:
                    notes = []
                    found.extend(parse_answer(await _ask(client, endpoint, template.format(name)), notes=notes))
                    result.warnings.extend(f"{name} / {kind}: {note}" for note in notes)
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
