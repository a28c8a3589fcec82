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

Local only: ``COURSE_ENDPOINT_KEY_FILE`` names the key file; requests without
``Authorization: Bearer <key>`` get 401 (Azure's gateway does this for managed endpoints).
Concurrent requests are batched: one generation call serves up to ``COURSE_MAX_BATCH`` prompts that
arrived within a few milliseconds of each other with the same parameters.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import threading
import time
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
MAX_INPUTS = int(os.environ.get("COURSE_MAX_INPUTS", "8"))
MAX_BATCH = int(os.environ.get("COURSE_MAX_BATCH", "16"))
BATCH_WINDOW_S = float(os.environ.get("COURSE_BATCH_WINDOW_MS", "15")) / 1000
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
_key: str | None = None
_batcher: Batcher | None = None
# A fast tokenizer is not safe to share between threads: encoding with padding (the batcher) while a request
# thread encodes a prompt fails at random ("Already borrowed"), a 500. Every use of the tokenizer takes this lock.
_tokenizer_lock = threading.Lock()


class BadRequest(ValueError):
    """A request the endpoint refuses with HTTP 400; the message says what was wrong."""


# --- the request --------------------------------------------------------------------------------------
def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("role"), str) and isinstance(item.get("content"), str)


def parse(body: bytes) -> tuple[list[Any], dict[str, Any]]:
    """(inputs, params) from a request body, or :class:`BadRequest`."""
    try:
        payload = json.loads(body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        shape = "{'input_data': [...], 'params': {...}}"
        raise BadRequest(f"the body is not valid JSON ({error}); send {shape}.") from None
    if not isinstance(payload, dict) or "input_data" not in payload:
        raise BadRequest("the body must be a JSON object with 'input_data' (and optionally 'params').")
    data = payload["input_data"]
    params = payload.get("params", {})
    if isinstance(data, dict):  # the legacy shape
        if "input_string" not in data:
            raise BadRequest("legacy input_data must hold 'input_string' (a list) and optionally 'parameters'.")
        params = data.get("parameters", params)
        data = data["input_string"]
    if isinstance(data, list) and data and all(_is_message(m) for m in data):
        data = [data]  # one conversation given directly
    if not isinstance(data, list) or not data:
        raise BadRequest("'input_data' must be a non-empty list of prompts or conversations.")
    if len(data) > MAX_INPUTS:
        raise BadRequest(f"'input_data' has {len(data)} inputs; at most {MAX_INPUTS} per request.")
    for index, item in enumerate(data):
        if isinstance(item, str):
            if not item.strip():
                raise BadRequest(f"input_data[{index}] is an empty string.")
        elif not (isinstance(item, list) and item and all(_is_message(m) for m in item)):
            raise BadRequest(f"input_data[{index}] must be a string or a list of {{'role', 'content'}} messages.")
    return data, validate_params(params)


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
    if not 1 <= merged["max_new_tokens"] <= MAX_NEW_TOKENS:
        raise BadRequest(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {merged['max_new_tokens']}.")
    if merged["temperature"] < 0:
        raise BadRequest(f"temperature must be >= 0, got {merged['temperature']}.")
    if not 0 < merged["top_p"] <= 1:
        raise BadRequest(f"top_p must be in (0, 1], got {merged['top_p']}.")
    return merged


def conversation(item: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": item}] if isinstance(item, str) else item


# --- batching ---------------------------------------------------------------------------------------
class _Job:
    """One request's prompts, waiting for their replies. (No dataclass: the inference server imports
    this script without registering it in sys.modules, which dataclasses need.)"""

    def __init__(self, prompts: list[str], params: dict[str, Any]) -> None:
        self.prompts = prompts
        self.params = params
        self.done = threading.Event()
        self.replies: list[str] | None = None
        self.error: BaseException | None = None

    @property
    def key(self) -> tuple:
        return tuple(sorted((k, v) for k, v in self.params.items() if k != "return_full_text"))


class Batcher:
    """One thread runs generation; requests that arrive together with equal params share a batch."""

    def __init__(self, generate: Any, max_batch: int = MAX_BATCH, window_s: float = BATCH_WINDOW_S) -> None:
        self.generate = generate
        self.max_batch = max_batch
        self.window_s = window_s
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.waiting: list[_Job] = []
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def submit(self, prompts: list[str], params: dict[str, Any], timeout_s: float = 600) -> list[str]:
        job = _Job(prompts, params)
        self.jobs.put(job)
        if not job.done.wait(timeout_s):
            raise TimeoutError(f"generation took longer than {timeout_s} s")
        if job.error is not None:
            raise job.error
        assert job.replies is not None
        return job.replies

    def _collect(self) -> list[_Job]:
        """The next batch: the oldest job, then jobs with equal params that arrive within the window."""
        first = self.waiting.pop(0) if self.waiting else self.jobs.get()
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
            if job.key == first.key and size + len(job.prompts) <= self.max_batch:
                batch.append(job)
                size += len(job.prompts)
            else:
                self.waiting.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
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


def serving_dtype() -> Any:
    """The dtype the serving hardware computes in: bf16 where native (Ampere+ GPUs, AVX512-BF16/AMX CPUs),
    fp16 on older GPUs, fp32 on other CPUs. transformers 5 would otherwise keep the checkpoint's saved dtype,
    so a bf16 fine-tune would generate in emulated bf16 on a CPU instance, many times slower."""
    import torch

    if hardware.cuda_available():
        return torch.bfloat16 if hardware.gpu_native_bf16() else torch.float16
    return torch.bfloat16 if hardware.cpu_native_bf16() else torch.float32


def steady_attention() -> None:
    """On CUDA, cuDNN's attention kernels off (this script travels without the course, so it keeps its own copy of
    ``phi3course.train.steady_attention``, which says why; tests/test_train.py holds the two alike)."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def init() -> None:
    """Load the model once per server process, read the key (local), start the batcher."""
    global _model, _tokenizer, _key, _batcher
    import torch

    location = _model_location()
    dtype = serving_dtype()
    steady_attention()
    logger.info("loading model from %s in %s", location, dtype)
    if (Path(location) / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
        _tokenizer = AutoTokenizer.from_pretrained(location)
    else:
        import mlflow

        components = mlflow.transformers.load_model(location, return_type="components")
        _model, _tokenizer = components["model"], components["tokenizer"]
    _model = _model.to(dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu")
    _model.eval()
    _tokenizer.padding_side = "left"
    if _tokenizer.pad_token is None:
        _tokenizer.pad_token = _tokenizer.eos_token
    key_file = os.environ.get("COURSE_ENDPOINT_KEY_FILE")
    _key = Path(key_file).read_text(encoding="utf-8").strip() if key_file else None
    _batcher = Batcher(generate)
    logger.info("model ready; key check %s", "on" if _key else "off (the gateway authenticates)")


def _authorised(header: str | None) -> bool:
    if _key is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), _key.encode())


def _json(message: Any, status: int) -> AMLResponse:
    return AMLResponse(message, status, json_str=True)


@rawhttp
def run(request: Any) -> AMLResponse:
    """Answer one scoring request (see the module's docstring for the shapes)."""
    if request.method != "POST":
        return _json({"error": "POST a JSON body to /score."}, 405)
    if not _authorised(request.headers.get("Authorization")):
        return _json({"error": "missing or wrong key: send 'Authorization: Bearer <endpoint key>'."}, 401)
    try:
        inputs, params = parse(request.get_data())
        with _tokenizer_lock:
            prompts = [
                _tokenizer.apply_chat_template(conversation(item), add_generation_prompt=True, tokenize=False)
                for item in inputs
            ]
            lengths = [len(_tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt in prompts]
        for index, tokens in enumerate(lengths):
            if tokens > MAX_PROMPT_TOKENS:
                raise BadRequest(f"input_data[{index}] is {tokens} tokens; at most {MAX_PROMPT_TOKENS}.")
    except BadRequest as error:
        return _json({"error": str(error)}, 400)
    assert _batcher is not None
    replies = _batcher.submit(prompts, params)
    if params["return_full_text"]:
        replies = [
            f"{item if isinstance(item, str) else item[-1]['content']}\n{reply}"
            for item, reply in zip(inputs, replies, strict=True)
        ]
    return _json(replies, 200)
