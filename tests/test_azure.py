from __future__ import annotations

import pytest

from phi3course import azure

GOOD = {
    "AZURE_SUBSCRIPTION_ID": "12345678-1234-1234-1234-123456789abc",
    "AZURE_RESOURCE_GROUP": "rg-phi3-course",
    "AZURE_ML_WORKSPACE_NAME": "phi3-ws",
    "AZURE_LOCATION": "eastus2",
    "AZURE_UAI_NAME": "phi3-identity",
    "AZURE_UAI_CLIENT_ID": "87654321-4321-4321-4321-cba987654321",
}


def problems_of(values: dict[str, str]) -> list[str]:
    with pytest.raises(azure.AzureConfigError) as caught:
        azure.validate(values)
    return caught.value.problems


def test_good_values_validate() -> None:
    settings = azure.validate(GOOD)
    assert settings.workspace_name == "phi3-ws"
    expected = "/resourceGroups/rg-phi3-course/providers/Microsoft.ManagedIdentity/userAssignedIdentities/phi3-identity"
    assert settings.uai_resource_id.endswith(expected)


def test_the_seed_placeholders_give_one_problem_per_value(clean_azure_env) -> None:
    values, _ = azure.read_values(".env.example", environ=False)
    found = problems_of(values)
    assert len(found) == len(azure.FIELDS)
    for field, line in zip(azure.FIELDS, found, strict=True):
        assert line.startswith(field.env) and "placeholder" in line and field.where in line


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("AZURE_SUBSCRIPTION_ID", "1234", "malformed: expected a GUID"),
        ("AZURE_SUBSCRIPTION_ID", "<subscription-id>", "placeholder"),
        ("AZURE_RESOURCE_GROUP", "", "is empty"),
        ("AZURE_ML_WORKSPACE_NAME", "my workspace!", "malformed"),
        ("AZURE_LOCATION", "East US 2", "lower case"),
        ("AZURE_UAI_CLIENT_ID", "   ", "is empty"),
    ],
)
def test_each_bad_value_is_named_with_where_to_find_it(key: str, value: str, words: str) -> None:
    found = problems_of({**GOOD, key: value})
    assert len(found) == 1
    assert found[0].startswith(key) and words in found[0] and "Find it in" in found[0]


def test_the_seeds_old_variable_name_gets_a_rename_hint() -> None:
    values = {k: v for k, v in GOOD.items() if k != "AZURE_ML_WORKSPACE_NAME"}
    values["AZURE_WORKSPACE_NAME"] = "phi3-ws"
    (line,) = problems_of(values)
    assert "rename AZURE_WORKSPACE_NAME to AZURE_ML_WORKSPACE_NAME" in line


def test_environment_overrides_the_env_file(tmp_path, clean_azure_env, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in GOOD.items()))
    monkeypatch.setenv("AZURE_LOCATION", "westeurope")
    values, source = azure.read_values(env_file)
    assert values["AZURE_LOCATION"] == "westeurope" and values["AZURE_RESOURCE_GROUP"] == "rg-phi3-course"
    assert source == ".env and the environment"
    assert azure.load(env_file).location == "westeurope"


def test_check_for_local_target_needs_nothing(tmp_path, clean_azure_env, capsys) -> None:
    assert azure.check("local", tmp_path / "missing.env") is None
    assert "no Azure account needed" in capsys.readouterr().out


def test_check_for_azureml_lists_every_problem(tmp_path, clean_azure_env, capsys) -> None:
    assert azure.check("azureml", tmp_path / "missing.env") is None
    out = capsys.readouterr().out
    assert out.count(" is empty.") == len(azure.FIELDS) and "will skip" in out


def test_role_commands_cover_the_three_roles_with_real_scopes() -> None:
    commands = azure.role_assignment_commands(azure.validate(GOOD))
    text = "\n".join(commands)
    for role in ("Contributor", "Storage Blob Data Reader", "AcrPull"):
        assert f'--role "{role}"' in text
    assert "--scope /subscriptions/12345678-1234-1234-1234-123456789abc/resourceGroups/rg-phi3-course" in text
    assert "az identity create -g rg-phi3-course -n phi3-identity -l eastus2" in commands[0]
    assert "<" not in text


def test_compute_spec_scales_to_zero_and_uses_the_identity() -> None:
    settings = azure.validate(GOOD)
    yaml_text = azure.to_yaml(azure.compute_spec(settings, name="gpu", size=azure.GPU_CLUSTER_SIZE))
    assert "min_instances: 0" in yaml_text and "size: Standard_NC24ads_A100_v4" in yaml_text
    assert settings.uai_resource_id in yaml_text and "user_assigned" in yaml_text


def test_compute_spec_without_settings_has_no_identity() -> None:
    assert "identity" not in azure.to_yaml(azure.compute_spec(None, size=azure.CPU_CLUSTER_SIZE))


def test_endpoint_and_deployment_specs_build_offline() -> None:
    settings = azure.validate(GOOD)
    endpoint_yaml = azure.to_yaml(azure.endpoint_spec(settings, "phi3-course"))
    assert "auth_mode: key" in endpoint_yaml and settings.uai_resource_id in endpoint_yaml
    deployment = azure.deployment_spec("phi3-course", azure.model_from_job("job-7", "phi3-course-local"))
    text = azure.to_yaml(deployment)
    assert "scoring_script: phi3course/score.py" in text and "instance_type: Standard_E4s_v3" in text
    assert "request_timeout_ms: 180000" in text and "max_concurrent_requests_per_instance: 3" in text
    assert "path: azureml://jobs/job-7/outputs/model/paths/model/" in text
