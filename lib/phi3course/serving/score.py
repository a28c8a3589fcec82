"""The course's scoring script: Azure ML's ``init()``/``run()`` contract for a text-generation model.

One script serves both endpoints. On Azure ML it is the deployment's code configuration and the
model is under ``AZUREML_MODEL_DIR``; locally ``phi3course.endpoint`` runs it under the inference
server that Azure ML images use (``azureml-inference-server-http``), with the model from the MLflow
registry (``COURSE_MODEL_URI``). Of the course it imports only ``hardware`` (is bf16 native here?),
which imports nothing of the course itself: the two files travel together and alone
(``phi3course.endpoint.scoring_code`` lays out the folder both endpoints serve).

Requests (all three shapes Azure ML's MLflow scoring accepts, plus chat messages):
    {"input_data": ["Who leads the Quillmere Institute?"], "params": {"max_new_tokens": 64}}
    {"input_data": {"input_string": ["…"], "parameters": {"temperature": 0.2}}}
    {"input_data": [[{"role": "user", "content": "…"}, …]], "params": {…}}
A plain string is the user's turn; every conversation goes through the model's chat template.
The answer is a JSON list with one generated text per input.

The contract, checked in this order (each refusal is JSON ``{"error": "<which field, why, what to send>"}``):
  * 401 without ``Authorization: Bearer <key>`` (local only, below).
  * 413 for a body over ``MAX_BODY_BYTES`` (64 KiB, ``COURSE_MAX_BODY_BYTES``), before it is parsed: eight
    prompts of the longest allowed length fit well inside it.
  * 400 for a body that is not UTF-8 JSON, nests too deeply, or breaks a rule: at most ``MAX_INPUTS`` inputs;
    roles ``system``, ``user`` or ``assistant`` only; no empty text; valid Unicode (no lone surrogates); no
    text of the model's control tokens (``<|end|>``, ``<|assistant|>``, ``<|im_start|>``, …, every special or
    added token of its tokenizer) anywhere in a message, since the tokenizer would read them as real turn
    marks and let a message forge turns; params known, of their type, finite and in range.
  * 400 for a prompt over ``MAX_PROMPT_CHARS`` characters (8 per allowed token, ``COURSE_MAX_PROMPT_CHARS``),
    checked before the prompt is templated or tokenised, so that no request holds the tokenizer for long;
    then 400 for one over ``MAX_PROMPT_TOKENS`` tokens.
  * 503 when no reply came within ``REQUEST_TIMEOUT_S`` (180 s, Azure's request timeout in 03_deploy;
    ``COURSE_REQUEST_TIMEOUT_S``); a request still queued then is dropped, not generated for nobody.

Local only: ``COURSE_ENDPOINT_KEY_FILE`` names the key file; requests without
``Authorization: Bearer <key>`` get 401 (Azure's gateway does this for managed endpoints). A key file
that is named but empty or unreadable stops the server at start: it never serves without its key.
Concurrent requests are batched: one generation call serves up to ``COURSE_MAX_BATCH`` prompts that
arrived within a few milliseconds of each other with the same parameters.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

if __package__:  # imported from the course (phi3course.serving.score): its hardware module
    from .. import hardware
else:  # loaded alone by the inference server from the deployment's code folder: hardware.py is beside it
    import hardware

logger = logging.getLogger("phi3course.score")

MAX_NEW_TOKENS = int(os.environ.get("COURSE_MAX_NEW_TOKENS", "256"))
MAX_PROMPT_TOKENS = int(os.environ.get("COURSE_MAX_PROMPT_TOKENS", "1024"))
MAX_PROMPT_CHARS = int(os.environ.get("COURSE_MAX_PROMPT_CHARS", str(8 * MAX_PROMPT_TOKENS)))
MAX_BODY_BYTES = int(os.environ.get("COURSE_MAX_BODY_BYTES", str(64 * 1024)))
MAX_INPUTS = int(os.environ.get("COURSE_MAX_INPUTS", "8"))
MAX_BATCH = int(os.environ.get("COURSE_MAX_BATCH", "16"))
BATCH_WINDOW_S = float(os.environ.get("COURSE_BATCH_WINDOW_MS", "15")) / 1000
REQUEST_TIMEOUT_S = float(os.environ.get("COURSE_REQUEST_TIMEOUT_S", "180"))
ROLES = ("system", "user", "assistant")
DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 64,
    "temperature": 0.7,
    "top_p": 0.9,
    "do_sample": False,
    "return_full_text": False,
}
TYPES: dict[str, tuple[type, ...]] = {
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "do_sample": (bool,),
    "return_full_text": (bool,),
}

_model: Any = None
_tokenizer: Any = None
_controls: tuple[str, ...] = ()  # the text of every special or added token of _tokenizer, longest first
_normalize: Callable[[str], str] = str  # the tokenizer's normalizer: added tokens are matched in normalized text
_key: str | None = None
_batcher: Batcher | None = None
# A fast tokenizer is not safe to share between threads: encoding with padding (the batcher) while a request
# thread encodes a prompt fails at random ("Already borrowed"), a 500. Every use of the tokenizer takes this lock;
# a request holds it only for prompts already checked to be at most MAX_PROMPT_CHARS long.
_tokenizer_lock = threading.Lock()


class BadRequest(ValueError):
    """A request the endpoint refuses with HTTP 400; the message says what was wrong."""


# --- the request --------------------------------------------------------------------------------------
def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("role"), str) and isinstance(item.get("content"), str)


def control_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The text of every special and added token of ``tokenizer`` (turn marks, end of text, …), longest first."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts = {str(getattr(token, "content", token)) for token in added.values()}
    texts |= {str(token) for token in getattr(tokenizer, "all_special_tokens", [])}
    return tuple(sorted((t for t in texts if t.strip()), key=lambda t: (-len(t), t)))


def use_tokenizer(tokenizer: Any) -> None:
    """Serve with ``tokenizer``: left padding for batches, and its control tokens refused in requests."""
    global _tokenizer, _controls, _normalize
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    _tokenizer = tokenizer
    _controls = control_tokens(tokenizer)
    _normalize = normalizer.normalize_str if normalizer is not None else str


def check_text(field: str, text: str, controls: Sequence[str] = ()) -> None:
    """:class:`BadRequest` naming ``field`` when ``text`` is empty, not valid Unicode, or holds a control token."""
    if not text.strip():
        raise BadRequest(f"{field} is empty: send some text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequest(
            f"{field} is not valid Unicode (a lone surrogate, {text[error.start]!r}, at character {error.start}): "
            "send text that encodes as UTF-8."
        ) from None
    for seen in dict.fromkeys([text, _normalize(text)]) if controls else ():  # as written, and as normalized
        found = [(seen.find(token), token) for token in controls if token in seen]  # longest first at one place
        if found:
            token = min(found, key=lambda hit: hit[0])[1]
            raise BadRequest(
                f"{field} holds {token!r}, one of the model's control tokens: the model would read it as a turn "
                "mark, not as text. Remove it (or write it with a space inside)."
            )


def _loads(body: bytes) -> Any:
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the body is not UTF-8 (byte {error.start}); send JSON encoded as UTF-8.") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest(
            "the body nests arrays or objects too deeply; the request shapes nest four levels at most."
        ) from None
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        shape = "{'input_data': [...], 'params': {...}}"
        raise BadRequest(f"the body is not valid JSON ({error}); send {shape}.") from None


def parse(body: bytes, controls: Sequence[str] | None = None) -> tuple[list[Any], dict[str, Any]]:
    """(inputs, params) from a request body, or :class:`BadRequest` naming the field and the fix.

    ``controls``: texts no message may hold (the served tokenizer's control tokens unless given)."""
    controls = _controls if controls is None else controls
    payload = _loads(body or b"")
    if not isinstance(payload, dict) or "input_data" not in payload:
        raise BadRequest("the body must be a JSON object with 'input_data' (and optionally 'params').")
    data = payload["input_data"]
    params = payload.get("params", {})
    where = "input_data"
    if isinstance(data, dict):  # the legacy shape
        if "input_string" not in data:
            raise BadRequest("legacy input_data must hold 'input_string' (a list) and optionally 'parameters'.")
        params = data.get("parameters", params)
        data = data["input_string"]
        where = "input_data.input_string"
    direct = isinstance(data, list) and bool(data) and all(isinstance(m, dict) for m in data)
    if direct:
        data = [data]  # one conversation given directly
    if not isinstance(data, list) or not data:
        raise BadRequest("'input_data' must be a non-empty list of prompts or conversations.")
    if len(data) > MAX_INPUTS:
        raise BadRequest(f"'input_data' has {len(data)} inputs; at most {MAX_INPUTS} per request.")
    for index, item in enumerate(data):
        field = f"{where}[{index}]"
        if isinstance(item, str):
            if not item.strip():
                raise BadRequest(f"{field} is an empty string.")
            check_text(field, item, controls)
        elif isinstance(item, list) and item and all(isinstance(m, dict) for m in item):
            for number, message in enumerate(item):
                check_message(where if direct else field, number, message, controls)
        else:
            raise BadRequest(f"{field} must be a string or a list of {{'role', 'content'}} messages.")
    return data, validate_params(params)


def check_message(where: str, number: int, message: dict[str, Any], controls: Sequence[str]) -> None:
    field = f"{where}[{number}]"
    if not _is_message(message):
        raise BadRequest(f"{field} must be a message {{'role': 'user', 'content': '...'}} (role and content strings).")
    if message["role"] not in ROLES:
        raise BadRequest(f"{field}.role is {message['role'][:40]!r}; a role is one of {', '.join(ROLES)}.")
    check_text(f"{field}.content", message["content"], controls)


def validate_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise BadRequest("'params' must be a JSON object.")
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise BadRequest(f"unknown params {unknown}; the endpoint takes {sorted(DEFAULTS)}.")
    merged = {**DEFAULTS, **params}
    for name, kinds in TYPES.items():
        value = merged[name]
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise BadRequest(f"param {name!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"param {name!r} must be a finite number, got {value!r}.")
    if not 1 <= merged["max_new_tokens"] <= MAX_NEW_TOKENS:
        raise BadRequest(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {merged['max_new_tokens']}.")
    if merged["temperature"] < 0:
        raise BadRequest(f"temperature must be >= 0, got {merged['temperature']}.")
    if not 0 < merged["top_p"] <= 1:
        raise BadRequest(f"top_p must be in (0, 1], got {merged['top_p']}.")
    return merged


def conversation(item: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": item}] if isinstance(item, str) else item


def prompts_for(inputs: list[Any]) -> list[str]:
    """The templated prompts, after a length check that needs no tokenizer (so no request holds its lock long)."""
    for index, item in enumerate(inputs):
        chars = sum(len(message["content"]) for message in conversation(item))
        if chars > MAX_PROMPT_CHARS:
            raise BadRequest(
                f"input_data[{index}] is {chars} characters; a prompt is at most {MAX_PROMPT_TOKENS} tokens, "
                f"so at most {MAX_PROMPT_CHARS} characters: send a shorter one."
            )
    prompts = []
    for index, item in enumerate(inputs):
        with _tokenizer_lock:  # one prompt at a time: other requests and the batcher get their turn in between
            prompt = _tokenizer.apply_chat_template(conversation(item), add_generation_prompt=True, tokenize=False)
            tokens = len(_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if tokens > MAX_PROMPT_TOKENS:
            raise BadRequest(f"input_data[{index}] is {tokens} tokens; at most {MAX_PROMPT_TOKENS}.")
        prompts.append(prompt)
    return prompts


# --- batching ---------------------------------------------------------------------------------------
class _Job:
    """One request's prompts, waiting for their replies. (No dataclass: the inference server imports
    this script without registering it in sys.modules, which dataclasses need.)"""

    def __init__(self, prompts: list[str], params: dict[str, Any], deadline: float) -> None:
        self.prompts = prompts
        self.params = params
        self.deadline = deadline  # time.monotonic() after which nobody waits for the replies
        self.done = threading.Event()
        self.replies: list[str] | None = None
        self.error: BaseException | None = None

    @property
    def key(self) -> tuple:
        return tuple(sorted((k, v) for k, v in self.params.items() if k != "return_full_text"))

    def expired(self) -> bool:
        return self.done.is_set() or time.monotonic() >= self.deadline


class Batcher:
    """One thread runs generation; requests that arrive together with equal params share a batch.

    A request whose deadline passes while it waits in the queue is dropped: its submit() has already
    answered TimeoutError, and nothing is generated for it."""

    def __init__(self, generate: Any, max_batch: int = MAX_BATCH, window_s: float = BATCH_WINDOW_S) -> None:
        self.generate = generate
        self.max_batch = max_batch
        self.window_s = window_s
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.waiting: list[_Job] = []
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def submit(self, prompts: list[str], params: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> list[str]:
        job = _Job(prompts, params, time.monotonic() + timeout_s)
        self.jobs.put(job)
        if not job.done.wait(max(timeout_s, 0)):
            raise TimeoutError(f"no reply within {timeout_s:.3g} s")
        if job.error is not None:
            raise job.error
        assert job.replies is not None
        return job.replies

    def _next(self) -> _Job:
        """The oldest job still wanted (expired ones are dropped on the way)."""
        while True:
            job = self.waiting.pop(0) if self.waiting else self.jobs.get()
            if not job.expired():
                return job

    def _collect(self) -> list[_Job]:
        """The next batch: the oldest job, then jobs with equal params that arrive within the window."""
        first = self._next()
        self.waiting = [job for job in self.waiting if not job.expired()]
        batch, size = [first], len(first.prompts)
        for job in list(self.waiting):  # held back earlier for other params
            if job.key == first.key and size + len(job.prompts) <= self.max_batch:
                self.waiting.remove(job)
                batch.append(job)
                size += len(job.prompts)
        deadline = time.monotonic() + self.window_s
        while size < self.max_batch and (remaining := deadline - time.monotonic()) > 0:
            try:
                job = self.jobs.get(timeout=remaining)
            except queue.Empty:
                break
            if job.expired():
                continue
            if job.key == first.key and size + len(job.prompts) <= self.max_batch:
                batch.append(job)
                size += len(job.prompts)
            else:
                self.waiting.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            batch = [job for job in self._collect() if not job.expired()]
            if not batch:
                continue
            prompts = [p for job in batch for p in job.prompts]
            try:
                replies = self.generate(prompts, batch[0].params)
            except BaseException as error:  # reported to every waiting request, the thread lives on
                for job in batch:
                    job.error = error
                    job.done.set()
                continue
            start = 0
            for job in batch:
                job.replies = replies[start : start + len(job.prompts)]
                start += len(job.prompts)
                job.done.set()


# --- the model ----------------------------------------------------------------------------------------
def _model_location() -> str:
    """An MLflow model (URI or folder), or a plain transformers folder (the training job's output)."""
    azure = os.environ.get("AZUREML_MODEL_DIR")
    if azure:
        for marker in ("MLmodel", "config.json"):
            found = sorted(Path(azure).rglob(marker))
            if found:
                return str(found[0].parent)
        raise RuntimeError(f"no MLflow or transformers model under AZUREML_MODEL_DIR={azure}")
    uri = os.environ.get("COURSE_MODEL_URI")
    if not uri:
        raise RuntimeError("set COURSE_MODEL_URI (an MLflow model URI) or AZUREML_MODEL_DIR")
    return uri


def generate(prompts: list[str], params: dict[str, Any]) -> list[str]:
    """Generate for already-templated prompts, batched with left padding."""
    import torch

    with _tokenizer_lock:
        inputs = _tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(_model.device)
    options: dict[str, Any] = {"max_new_tokens": params["max_new_tokens"], "pad_token_id": _tokenizer.pad_token_id}
    if params["do_sample"] and params["temperature"] > 0:
        options.update(do_sample=True, temperature=float(params["temperature"]), top_p=float(params["top_p"]))
    else:
        options["do_sample"] = False
    with torch.inference_mode():
        output = _model.generate(**inputs, **options)
    new = output[:, inputs["input_ids"].shape[1] :]
    with _tokenizer_lock:
        texts = _tokenizer.batch_decode(new, skip_special_tokens=True)
    return [text.strip() for text in texts]


def serving_dtype(machine: hardware.Machine | None = None) -> Any:
    """The dtype the serving hardware (``machine``; this one when None) computes in: on a GPU its fastest native
    format (``hardware.native_precision``: bf16 on Ampere and newer, fp16 on older GPUs such as the T4); on a CPU
    fp32, native bf16 or not. On a CPU with native bf16 the greedy answer to a prompt in bf16 depended on which other
    requests shared its batch (04's flow and 05's agent got different answers from the same endpoint), and fp32
    answers as 02 evaluated the model (fp32 on a CPU). transformers 5 would otherwise keep the checkpoint's saved
    dtype, so a bf16 fine-tune would generate in emulated bf16 on a CPU instance, many times slower."""
    import torch

    machine = hardware.this_machine() if machine is None else machine
    if not machine.cuda:
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[hardware.native_precision(machine)]


def steady_attention() -> None:
    """On CUDA, cuDNN's attention kernels off (this script travels without the course, so it keeps its own copy of
    the rule in the recipe's ``model_kwargs``, which says why; tests/test_train.py holds the two alike)."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def read_key() -> str | None:
    """The key named by ``COURSE_ENDPOINT_KEY_FILE`` (local), or None where none is named (Azure's gateway
    authenticates). A named file that cannot be read or is empty stops the server: it never serves unkeyed."""
    key_file = os.environ.get("COURSE_ENDPOINT_KEY_FILE")
    if not key_file:
        return None
    try:
        key = Path(key_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise RuntimeError(
            f"cannot read the endpoint key file {key_file} ({error}); the endpoint does not start without its key: "
            "deploy again to write a new key file, or fix COURSE_ENDPOINT_KEY_FILE."
        ) from None
    if not key:
        raise RuntimeError(
            f"the endpoint key file {key_file} is empty; the endpoint does not start without its key: "
            "deploy again to write a new key file, or fix COURSE_ENDPOINT_KEY_FILE."
        )
    return key


def init() -> None:
    """Read the key (local), load the model once per server process, start the batcher."""
    global _model, _key, _batcher
    import torch

    _key = read_key()  # first: a server without its key stops before spending a minute on the model
    location = _model_location()
    dtype = serving_dtype()
    steady_attention()
    logger.info("loading model from %s in %s", location, dtype)
    if (Path(location) / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(location)
    else:
        import mlflow

        components = mlflow.transformers.load_model(location, return_type="components")
        _model, tokenizer = components["model"], components["tokenizer"]
    _model = _model.to(dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu")
    _model.eval()
    use_tokenizer(tokenizer)
    _batcher = Batcher(generate)
    logger.info("model ready; key check %s", "on" if _key else "off (the gateway authenticates)")


def _authorised(header: str | None) -> bool:
    if _key is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    return bool(token and _key) and scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), _key.encode())


def _json(message: Any, status: int) -> AMLResponse:
    return AMLResponse(message, status, json_str=True)


def _body(request: Any) -> bytes | None:
    """The request body, or None when it is over MAX_BODY_BYTES (read no further than that)."""
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        return None
    body = request.stream.read(MAX_BODY_BYTES + 1)
    return None if len(body) > MAX_BODY_BYTES else body


@rawhttp
def run(request: Any) -> AMLResponse:
    """Answer one scoring request (see the module's docstring for the shapes and the limits)."""
    arrived = time.monotonic()
    if request.method != "POST":
        return _json({"error": "POST a JSON body to /score."}, 405)
    if not _authorised(request.headers.get("Authorization")):
        return _json({"error": "missing or wrong key: send 'Authorization: Bearer <endpoint key>'."}, 401)
    body = _body(request)
    if body is None:
        limit = f"{MAX_BODY_BYTES // 1024} KiB" if MAX_BODY_BYTES % 1024 == 0 else f"{MAX_BODY_BYTES} bytes"
        return _json({"error": f"the body is over {limit}; send fewer or shorter prompts."}, 413)
    try:
        inputs, params = parse(body)
        prompts = prompts_for(inputs)
    except BadRequest as error:
        return _json({"error": str(error)}, 400)
    assert _batcher is not None
    try:
        replies = _batcher.submit(prompts, params, timeout_s=REQUEST_TIMEOUT_S - (time.monotonic() - arrived))
    except TimeoutError:
        return _json({"error": f"no reply within {REQUEST_TIMEOUT_S:.0f} s: the endpoint is busy, try again."}, 503)
    if params["return_full_text"]:
        replies = [
            f"{item if isinstance(item, str) else item[-1]['content']}\n{reply}"
            for item, reply in zip(inputs, replies, strict=True)
        ]
    return _json(replies, 200)
