"""Which recipe learns the facts without forgetting the world: one training per lever, each scored like 02.

    python -m benchmarks.forgetting --run runs/local [--variant name:key=value,key=value ...]

Each variant is the local profile's settings with some changed, trained by ``train.train`` (the job's own
function: the same LoraConfig and SFTConfig as notebook 02) on the run's data (01_data made it), then asked the
held-out facts (answer-sized budget, as 02) and the general-knowledge probe. The base model's scores come from
the run's ``summary.json`` (02 measured them). Prints a table and writes ``<run>/forgetting.json``; minutes per
variant on a 2-core CPU, so run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from phi3course import profiles, train

# The levers 02's table reports that are settings (the replay prompts are not: they are probe.REPLAY_PROMPTS).
DEFAULT_VARIANTS = (
    "recipe:",
    "seed-7:seed=7",
    "seed-123:seed=123",
    "rank-8:lora_r=8",  # alpha 16, as 02 maps a rank
    "every-layer:lora_layers=1.0",
    "upper-half:lora_layers=0.5",
    "no-replay:replay=0",
)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` → (name, changes), values typed like the settings' defaults."""
    name, _, spec = text.partition(":")
    fields = train.TrainSettings.__dataclass_fields__
    changes: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"{key!r} is not a TrainSettings field (one of: {', '.join(fields)})")
        kind = {"str": str, "int": int, "float": float, "bool": bool}[str(fields[key].type)]
        if kind is bool:  # bool("False") is True
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"{key} is true or false, got {value!r}")
            changes[key] = value.lower() == "true"
        else:
            changes[key] = kind(value)
    return name, changes


def variant_settings(changes: dict[str, Any], **fields: Any) -> train.TrainSettings:
    """The local profile's settings with ``changes``, as notebook 02 would train with those parameters (a new rank
    brings alpha = 2 × rank with it)."""
    return train.settings_from_profile({**profiles.parameters("local"), **changes}, **fields)


def score(variant: train.TrainSettings, model_dir: str, name: str) -> dict[str, float]:
    """Held-out facts and the general probe of the trained variant, with the recipe's own evaluation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi3course.data import read_jsonl
    from phi3course.recipe import held_out

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    scored = held_out(model, AutoTokenizer.from_pretrained(model_dir), read_jsonl(variant.test_file), name)
    return {"facts": scored["exact_match"], "general": scored["general"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/local", help="a run directory where 01_data and 02 ran")
    parser.add_argument("--variant", action="append", help="name:key=value,... (repeatable)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    state = json.loads((run / "state.json").read_text())
    base = json.loads((run / "summary.json").read_text())["eval"]["base"]
    rows = [{"variant": "base model", "facts": base["exact_match"], "general": base["general"]}]
    for name, changes in map(parse_variant, args.variant or DEFAULT_VARIANTS):
        variant = variant_settings(
            changes,
            train_file=state["train_path"],
            test_file=state["test_path"],
            output_dir=str(run / "forgetting" / name),
            model=state.get("model", "smollm2-135m-instruct"),
        )
        began = time.perf_counter()
        result = train.train(variant)
        scored = score(variant, result.model_dir, name)
        rows.append(
            {
                "variant": name,
                "changes": changes,
                **scored,
                "general_vs_base": round(scored["general"] / base["general"], 3) if base["general"] else None,
                "steps": result.steps,
                "train_seconds": result.seconds,
                "tokens_per_second": result.tokens_per_second,
                "minutes": round((time.perf_counter() - began) / 60, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        (run / "forgetting.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'variant':<14} {'facts':>6} {'general':>8} {'× base':>7} {'steps':>6} {'train s':>8}")
    for row in rows:
        print(
            f"{row['variant']:<14} {row['facts']:>6.3f} {row['general']:>8.3f} {row.get('general_vs_base') or '':>7} "
            f"{row.get('steps', ''):>6} {row.get('train_seconds', ''):>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
