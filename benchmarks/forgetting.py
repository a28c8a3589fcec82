"""Which recipe learns the facts without forgetting the world: one training per lever, each scored like 02.

    python -m benchmarks.forgetting --run runs/local [--facts examples/my_facts.yaml] [--variant name:key=value,...]
                                    [--test-at-checks] [--lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,...]

Each variant is the local profile's settings with some changed, trained by ``train.train`` (the job's own
function: the same LoraConfig and SFTConfig as notebook 02, and 02's model selection on the validation split) on the
run's data (01_data made it), or on a facts file's (``--facts``: split as 01 splits it, with the local profile's
``facts_templates``), then asked the held-out facts (answer-sized budget, as 02) and the general-knowledge probe.
The base model's scores come from the run's ``summary.json`` (02 measured them); with ``--facts`` the base model
answers the file's test questions here. The default variants are five training seeds. Prints a table and writes
``<run>/forgetting.json`` (``forgetting-<facts file>.json`` with ``--facts``); minutes per variant on a 2-core CPU,
so run it alone.

``--test-at-checks`` also asks the test questions at every validation check, and so shows which checks would have
met the targets on the test: what a selection rule could have kept at best. It is a measurement of the rule; the
recipe never reads the test during training (each check costs a held-out evaluation, about half a minute here).
It also measures the drift at each check, on the probe's validation slice and on its test questions: how much less
likely the model finds the base model's own greedy answers than the base model did (the mean rise in their loss per
token; 0 = it answers as the base model does). Unlike the right/wrong scores, which move in steps of one question,
the drift moves smoothly, so the two sets can be compared with each other and with the right/wrong scores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from phi3course import profiles, train

# The levers 02's table reports that are settings (the replay prompts are not: they are probe.REPLAY_PROMPTS).
# Five training seeds of the recipe (the levers were measured so: docs/measurements.md, e.g. "rank-8:lora_r=8",
# "every-layer:lora_layers=1.0", "no-replay:replay=0", "no-selection:check_every=0").
DEFAULT_VARIANTS = ("seed-42:seed=42", "seed-1:seed=1", "seed-2:seed=2", "seed-7:seed=7", "seed-123:seed=123")


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


def lora_targets(text: str) -> list[str]:
    """``--lora-targets``: the projections that get adapters, comma-separated names from the recipe's
    ``ATTENTION_TARGETS`` and ``MLP_TARGETS`` (the recipe's ``LORA_TARGETS`` is the MLP's). A lever that is not a
    setting: the recipe's list is replaced for every variant of the run."""
    from phi3course.recipe import ATTENTION_TARGETS, MLP_TARGETS

    known = ATTENTION_TARGETS + MLP_TARGETS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise SystemExit(f"--lora-targets {text!r}: name projections of the decoder ({', '.join(known)})")
    return names


def variant_settings(changes: dict[str, Any], **fields: Any) -> train.TrainSettings:
    """The local profile's settings with ``changes``, as notebook 02 would train with those parameters (a new rank
    brings alpha = 2 × rank with it)."""
    return train.settings_from_profile({**profiles.parameters("local"), **changes}, **fields)


def score(test_file: str, model_dir: str, name: str) -> dict[str, float]:
    """Held-out facts and the general probe of the model in ``model_dir``, with the recipe's own evaluation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi3course.data import read_jsonl
    from phi3course.recipe import held_out

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    scored = held_out(model, AutoTokenizer.from_pretrained(model_dir), read_jsonl(test_file), name)
    return {"facts": scored["exact_match"], "general": scored["general"]}


def facts_data(run: Path, facts_file: str) -> dict[str, str]:
    """01's split of ``facts_file`` (the local profile's ``facts_templates``) in ``<run>/forgetting/data-<name>``."""
    from phi3course import data

    parameters = profiles.parameters("local")
    prepared = data.prepare(
        "facts",
        run / "forgetting" / f"data-{Path(facts_file).stem}",
        seed=parameters["seed"],
        facts_file=facts_file,
        facts_templates=parameters["facts_templates"],
    )
    return {
        "train_path": str(prepared.train_path),
        "validation_path": str(prepared.validation_path or ""),
        "test_path": str(prepared.test_path),
    }


def answer_loss(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[float]:
    """For each (question, answer): the mean loss per token of ``answer`` as the model's reply to ``question`` (its
    chat template, teacher-forced, the answer's own tokens without an end of turn), by
    :func:`phi3course.evaluate.row_losses`."""
    from phi3course.evaluate import row_losses

    examples = []
    for question, answer in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        asked = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        said = tokenizer(answer, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        examples.append((asked + said, [-100] * len(asked) + said))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [total / max(count, 1) for total, count in row_losses(model, examples, pad, batch_size)]


class TestAtChecks(TrainerCallback):
    """A trainer callback asking the held-out test at the steps the model selection checks (every ``check_every``
    epochs and the last step), and measuring the drift there (the module's docstring), for the measurement only;
    greedy answers and no gradients, so the training it watches is unchanged."""

    def __init__(self, test_file: str, settings: train.TrainSettings) -> None:
        from phi3course.data import read_jsonl
        from phi3course.probe import PROBE, VALIDATION_PROBE

        self.rows, self.settings = read_jsonl(test_file), settings
        self.every, self.scores = 0, {}  # step → {"facts", "general", "validation_drift", "test_drift"}
        self.drift_questions = {"validation_drift": VALIDATION_PROBE, "test_drift": PROBE}
        self.base_answers: dict[str, list[tuple[str, str]]] = {}  # the base model's greedy replies, per set
        self.base_loss: dict[str, list[float]] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        per_epoch = state.max_steps / self.settings.epochs if self.settings.max_steps <= 0 else state.max_steps
        self.every = train.check_interval(self.settings, round(per_epoch))
        tokenizer = kwargs.get("processing_class")
        if model is None or tokenizer is None:
            return
        from phi3course.probe import probe_score

        model.eval()  # LoRA's B starts at zero: the model answers as the base model does
        for name, questions in self.drift_questions.items():
            _, replied = probe_score(model, tokenizer, questions, desc=None)  # greedy, as the probe asks them
            self.base_answers[name] = [(row["question"], row["reply"]) for row in replied]
            self.base_loss[name] = answer_loss(model, tokenizer, self.base_answers[name])
        model.train()

    def drift(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Each set's mean rise in the loss of the base model's answers since the base model (0 at step 0)."""
        found = {}
        for name, pairs in self.base_answers.items():
            now = answer_loss(model, tokenizer, pairs)
            found[name] = round(sum(n - b for n, b in zip(now, self.base_loss[name], strict=True)) / len(now), 4)
        return found

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every and state.global_step < state.max_steps and not control.should_training_stop:
            return
        from phi3course.recipe import held_out

        model.eval()
        scored = held_out(model, kwargs["processing_class"], self.rows, f"test at step {state.global_step}")
        drift = self.drift(model, kwargs["processing_class"]) if self.base_answers else {}
        model.train()
        self.scores[state.global_step] = {"facts": scored["exact_match"], "general": scored["general"], **drift}


DRIFT_KEYS = ("validation_drift", "test_drift")


def check_table(checks: list[dict[str, Any]], tested: dict[int, dict[str, float]], base: dict[str, float]) -> list:
    """The validation checks beside the test's scores at the same steps (step 0: the base model's)."""
    rows = []
    for check in checks:
        test = tested.get(check["step"]) or (
            {"facts": base["exact_match"], "general": base["general"]} if check["step"] == 0 else None
        )
        row = {key: check[key] for key in ("step", "facts", "general_vs_base")}
        if test is not None:
            row["test_facts"] = test["facts"]
            row["test_general_vs_base"] = round(test["general"] / base["general"], 3) if base["general"] else None
            for name in DRIFT_KEYS:  # where the drift was measured (step 0: the base model, none by definition)
                if name in test or (check["step"] == 0 and any(name in found for found in tested.values())):
                    row[name] = test.get(name, 0.0)
        rows.append(row)
    return rows


def base_scores(model: str, test_file: str) -> dict[str, float]:
    """The base model's held-out facts and general probe, as 02 scores them."""
    from phi3course import models

    return score(test_file, str(models.local_path(models.resolve(model))), "base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/local", help="a run where 01_data ran (and 02: its base scores)")
    parser.add_argument("--facts", help="a facts file (YAML or CSV) to train on instead of the run's data")
    parser.add_argument("--variant", action="append", help="name:key=value,... (repeatable)")
    parser.add_argument(
        "--test-at-checks", action="store_true", help="ask the test at every validation check too (a measurement)"
    )
    parser.add_argument(
        "--lora-targets",
        type=lora_targets,
        help="adapters on these projections instead of the recipe's LORA_TARGETS (the MLP's), e.g. every one: "
        "qkv_proj,q_proj,k_proj,v_proj,o_proj,gate_up_proj,gate_proj,up_proj,down_proj",
    )
    args = parser.parse_args(argv)
    if not args.lora_targets:
        return measure(args)
    from phi3course import recipe

    shipped = recipe.LORA_TARGETS
    recipe.LORA_TARGETS = args.lora_targets  # lora_config reads it when each variant is built
    try:
        return measure(args)
    finally:
        recipe.LORA_TARGETS = shipped


def measure(args: argparse.Namespace) -> int:
    """Train and score each variant of ``args`` (``main``'s options), print the table, write the file."""
    run = Path(args.run)
    state = json.loads((run / "state.json").read_text())
    model = state.get("model", "smollm2-135m-instruct")
    out, base = run / "forgetting.json", None
    if args.facts:
        state = {**state, **facts_data(run, args.facts)}
        out = run / f"forgetting-{Path(args.facts).stem}.json"
    else:  # 02's base scores where 02 ran on the run's data
        base = (json.loads((run / "summary.json").read_text()).get("eval") or {}).get("base")
    if base is None:  # the base model asked here
        found = base_scores(model, state["test_path"])
        base = {"exact_match": found["facts"], "general": found["general"]}
    rows = [{"variant": "base model", "facts": base["exact_match"], "general": base["general"]}]
    for name, changes in map(parse_variant, args.variant or DEFAULT_VARIANTS):
        variant = variant_settings(
            changes,
            train_file=state["train_path"],
            test_file=state["test_path"],
            validation_file=state.get("validation_path", ""),
            output_dir=str(run / "forgetting" / (f"{Path(args.facts).stem}-{name}" if args.facts else name)),
            model=model,
        )
        began = time.perf_counter()
        watch = TestAtChecks(variant.test_file, variant) if args.test_at_checks else None
        result = train.train(variant, callbacks=[watch] if watch else None)
        scored = score(variant.test_file, result.model_dir, name)
        rows.append(
            {
                "variant": name,
                "changes": changes,
                **({"lora_targets": args.lora_targets} if args.lora_targets else {}),
                **scored,
                "general_vs_base": round(scored["general"] / base["general"], 3) if base["general"] else None,
                "steps": result.steps,
                "best_step": result.best_step,  # the model selection's kept step (None: no validation split)
                "stopped_early": result.steps < result.planned_steps,
                "train_seconds": result.seconds,
                "tokens_per_second": result.tokens_per_second,
                "minutes": round((time.perf_counter() - began) / 60, 1),
            }
        )
        if watch is not None:
            rows[-1]["checks"] = check_table(result.checks, watch.scores, base)
            for check in rows[-1]["checks"]:
                print(
                    f"  step {check['step']:>3}: validation {check['facts']:.3f} / {check['general_vs_base']:.3f} x"
                    f"   test {check.get('test_facts', float('nan')):.3f} / "
                    f"{check.get('test_general_vs_base') or float('nan'):.3f} x"
                    f"   drift {check.get('validation_drift', float('nan')):.3f} / "
                    f"{check.get('test_drift', float('nan')):.3f}"
                )
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps(rows, indent=1))
    print(f"\n{'variant':<14} {'facts':>6} {'general':>8} {'× base':>7} {'steps':>6} {'kept':>5} {'train s':>8}")
    for row in rows:
        print(
            f"{row['variant']:<14} {row['facts']:>6.3f} {row['general']:>8.3f} {row.get('general_vs_base') or '':>7} "
            f"{row.get('steps', ''):>6} {row.get('best_step') or '':>5} {row.get('train_seconds', ''):>8}"
        )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
