"""``/api/validate-yaml`` of the local Hub reads cards with huggingface_hub's own card parsing."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import EvalResult, ModelCard, ModelCardData, RepoCard

from hf_recycle.testing.local_hub import LocalHub

GOOD = str(
    ModelCard.from_template(
        ModelCardData(
            license="mit",
            base_model="org/base",
            model_name="merged",
            eval_results=[
                EvalResult(
                    task_type="text-generation",
                    dataset_type="json",
                    dataset_name="addition",
                    metric_type="exact_match",
                    metric_value=0.5,
                )
            ],
        ),
        template_str="---\n{{ card_data }}\n---\n# merged\n",
    )
)
BAD = {
    "model-index is a number": "---\nlicense: mit\nmodel-index: 5\n---\n# x\n",
    "model-index entry without results": "---\nmodel-index:\n- name: merged\n---\n# x\n",
    "metric without a value": (
        "---\nmodel-index:\n- name: m\n  results:\n  - task: {type: text-generation}\n"
        "    dataset: {type: json, name: d}\n    metrics:\n    - type: accuracy\n---\n"
    ),
    "YAML that does not parse": "---\nlicense: [mit\n---\n# x\n",
    "metadata that is not a mapping": "---\n- a\n- b\n---\n# x\n",
}


@pytest.fixture(scope="module")
def hub():
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def online(hub, monkeypatch):
    """huggingface_hub online and pointed at the server (RepoCard.validate reads constants.ENDPOINT)."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return hub


def _validate(hub, content, repo_type="model"):
    from huggingface_hub.utils import get_session

    return get_session().post(
        f"{hub.endpoint}/api/validate-yaml", json={"content": content, "repoType": repo_type}
    )


def test_a_good_card_validates(online):
    assert "model-index" in GOOD
    for content, repo_type in [
        (GOOD, "model"),
        ("# no metadata\n", "model"),
        ("---\nlicense: mit\n---\n", "dataset"),
    ]:
        response = _validate(online, content, repo_type)
        assert (response.status_code, response.json()) == (200, {"errors": [], "warnings": []})
    RepoCard(GOOD).validate()  # no error
    api = online.api()
    api.create_repo("org/good")
    api.upload_file(path_or_fileobj=GOOD.encode(), path_in_repo="README.md", repo_id="org/good")
    card = ModelCard.load(api.hf_hub_download("org/good", "README.md"))
    assert card.data.eval_results[0].metric_value == 0.5


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_card_gets_errors_in_the_hubs_format(online, name):
    response = _validate(online, BAD[name])
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors and all(isinstance(e["message"], str) and e["message"] for e in errors)


def test_repo_card_validate_raises_for_a_bad_model_index(online):
    card = RepoCard(BAD["model-index is a number"])  # the generic card keeps the raw metadata
    with pytest.raises(ValueError, match="model_index"):
        card.validate(repo_type="model")


def test_an_upload_with_a_bad_readme_is_refused_before_any_commit(online, tmp_path):
    api = online.api()
    api.create_repo("org/bad-card")
    head = api.model_info("org/bad-card").sha
    (tmp_path / "README.md").write_text(BAD["model-index is a number"])
    (tmp_path / "config.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_folder(repo_id="org/bad-card", folder_path=str(tmp_path))
    assert api.model_info("org/bad-card").sha == head


def test_a_request_without_content_is_a_bad_request(online):
    from huggingface_hub.utils import get_session

    response = get_session().post(f"{online.endpoint}/api/validate-yaml", json={"repoType": "model"})
    assert response.status_code == 400
