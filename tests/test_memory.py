"""Memory estimated from the model's real shapes and the real (padding-free) token count."""

from __future__ import annotations

import pytest

from phi3course import memory, models

PHI3 = models.PRESETS["phi-3-mini-4k-instruct"]
SMOL = models.PRESETS["smollm2-135m-instruct"]
T4_GIB, A100_GIB = 15.0, 80.0  # what torch reports for a "16 GB" T4 and an "80 GB" A100
# The azureml profile's batch: 8 rows. Chat rows of the course's data are ~60–130 tokens; the old estimate
# counted batch_size × max_length = 8 × 512 tokens although batches are padding-free.
ROWS, MEAN_ROW_TOKENS, MAX_LENGTH = 8, 128, 512


def test_phi3_mini_shapes_are_the_real_ones() -> None:
    """32 layers × 3072 wide (the old estimate guessed 85 × 1935 from the parameter count)."""
    shape = PHI3.shape
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads) == (32, 3072, 32, 32)
    assert (shape.intermediate, shape.vocab, shape.tied) == (8192, 32064, False)


@pytest.mark.parametrize(
    "preset",
    [PHI3, SMOL, models.PRESETS["phi-3.5-mini-instruct"], models.PRESETS["phi-4-mini-instruct"]],
    ids=lambda p: p.name,
)
def test_shapes_account_for_every_parameter(preset: models.Preset) -> None:
    assert memory.total_parameters(preset.shape) == pytest.approx(preset.parameters_m * 1e6, rel=0.001)


def test_the_tiny_shape_is_the_tiny_models_config() -> None:
    model, _ = models.load_model(models.PRESETS["phi-3-tiny"])
    config, shape = model.config, models.PRESETS["phi-3-tiny"].shape
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (
        shape.layers,
        shape.hidden,
        shape.intermediate,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (
        shape.heads,
        shape.kv_heads,
        shape.vocab,
    )
    assert memory.total_parameters(shape) == sum(p.numel() for p in model.parameters())
    assert {k: models.TINY_CONFIG[k] for k in ("hidden_size", "num_hidden_layers")} == {
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
    }


def test_tokens_are_rows_times_mean_length_not_batch_times_max_length() -> None:
    assert memory.batch_tokens(ROWS, MEAN_ROW_TOKENS) == 1024
    assert memory.batch_tokens(ROWS, MEAN_ROW_TOKENS) < ROWS * MAX_LENGTH


def test_a_16gb_gpu_fine_tunes_phi3_mini_with_qlora() -> None:
    """The learner with a 16 GB GPU and a hub connection (target=local, model=phi-3-mini-4k-instruct)."""
    tokens = memory.batch_tokens(ROWS, MEAN_ROW_TOKENS)
    found = memory.check(PHI3, "qlora", "fp16", tokens, T4_GIB, device="cuda", where="a 16 GB GPU")
    assert found.fits and found.total_gib < 10, found  # the old estimate said ~24 GiB
    assert found.weights_gib < 2.5  # 4-bit linear layers; embeddings and head in 16 bit


def test_lora_in_16_bit_fits_a_16gb_gpu_at_the_profiles_batch() -> None:
    tokens = memory.batch_tokens(ROWS, MEAN_ROW_TOKENS)
    assert memory.estimate(PHI3, "lora", "fp16", tokens, T4_GIB, device="cuda").fits


def test_lora_fits_a_64gb_laptop_in_fp32() -> None:
    tokens = memory.batch_tokens(ROWS, MEAN_ROW_TOKENS)
    free_on_a_64gb_laptop = 56.0  # what psutil reports available with the OS and a browser running
    assert memory.check(PHI3, "lora", "fp32", tokens, free_on_a_64gb_laptop, device="cpu").fits


def test_lora_bf16_on_an_a100_80gb_fits_even_full_length_rows() -> None:
    found = memory.check(PHI3, "lora", "bf16", ROWS * MAX_LENGTH, A100_GIB, device="cuda")
    assert found.fits and found.weights_gib == pytest.approx(3.821e9 * 2 / memory.GIB, rel=0.01)


def test_full_fine_tune_of_phi3_mini_on_16gb_is_refused_with_what_fits() -> None:
    tokens = memory.batch_tokens(ROWS, MEAN_ROW_TOKENS)
    with pytest.raises(memory.MemoryBudgetError) as refused:
        memory.check(PHI3, "full", "fp16", tokens, T4_GIB, device="cuda", where="Standard_NC4as_T4_v3")
    message = str(refused.value)
    assert "Standard_NC4as_T4_v3" in message and "method='qlora'" in message and "method='lora'" in message
    # optimizer state alone: 12 bytes for each of 3.8 B parameters
    assert memory.estimate(PHI3, "full", "fp16", tokens, T4_GIB).training_state_gib > 40


def test_qlora_is_offered_only_on_cuda_and_checkpointing_when_it_helps() -> None:
    with pytest.raises(memory.MemoryBudgetError) as refused:
        memory.check(PHI3, "full", "fp32", 1024, 32.0, device="cpu")
    assert "qlora" not in str(refused.value)
    with pytest.raises(memory.MemoryBudgetError) as refused:
        memory.check(PHI3, "qlora", "fp16", ROWS * MAX_LENGTH * 2, T4_GIB)
    assert "gradient_checkpointing=True" in str(refused.value)


def test_each_training_size_fits_the_method_and_precision_it_advises() -> None:
    from phi3course import azure

    tokens = memory.batch_tokens(ROWS, MEAN_ROW_TOKENS)
    for size in azure.VM_SIZES.values():
        assert size.precision == ("bf16" if size.bf16 else "fp16"), size.name
        assert memory.estimate(PHI3, size.method, size.precision, tokens, size.gpu_gib, where=size.name).fits
    t4 = azure.VM_SIZES["Standard_NC4as_T4_v3"]
    assert not memory.estimate(PHI3, "full", t4.precision, tokens, t4.gpu_gib).fits


def test_mean_row_tokens_from_the_data() -> None:
    from phi3course import synthetic

    rows, _ = synthetic.splits(seed=0, subjects=2)
    _, tokenizer = models.load_model(models.PRESETS["phi-3-tiny"])
    exact, rough = memory.mean_row_tokens(rows, tokenizer), memory.mean_row_tokens(rows)
    assert 5 < exact < 512 and 5 < rough < 512
    assert memory.mean_row_tokens([]) == 0.0
    found = memory.estimate(PHI3, "qlora", "fp16", memory.batch_tokens(ROWS, exact), T4_GIB)
    assert dict(found.rows())["total"] == round(found.total_gib, 1)


PHI4 = models.PRESETS["phi-4-mini-instruct"]


def test_phi4_minis_tied_embeddings_count_once_and_its_kv_heads_are_a_third() -> None:
    """3,836,021,760 parameters: one 200064 × 3072 embedding shared with the LM head (untied, it would add 0.6 B), and
    key/value projections of 8 heads for 24 query heads."""
    counts = memory.parameters(PHI4.shape)
    assert counts["embedding"] == 200064 * 3072
    assert memory.total_parameters(PHI4.shape) == 3_836_021_760
    assert memory.total_parameters(PHI4.shape) == pytest.approx(PHI4.parameters_m * 1e6, rel=0.001)
    head = 3072 // 24
    attention = 3072 * 3072 + 2 * 3072 * (8 * head) + 3072 * 3072
    assert counts["linear"] == 32 * (attention + 3 * 3072 * 8192)
    lora_bf16 = memory.estimate(PHI4, "lora", "bf16", 1024, A100_GIB)
    assert lora_bf16.weights_gib == pytest.approx(3_836_021_760 * 2 / memory.GIB)
