"""Finding registered models, torch-free: names, model URIs and registry searches.

Naming: one registered model per architecture and dataset ("cifar10-resnet20-w1"); seeds and data
fractions are versions of it, told apart by version tags (contract.VERSION_CONFIG), and the alias
`newest` follows the newest version. A model is addressed as models:/NAME/VERSION,
models:/NAME/latest or models:/NAME@ALIAS.
"""

from __future__ import annotations

import re

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from .contract import model_uri

__all__ = ["search_versions", "find_versions", "split_uris", "uris_matching", "resolve_version", "logged_model_id", "MODEL_URI"]

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w-]+))$")


def search_versions(filter_string: str) -> list[ModelVersion]:
    """MlflowClient.search_model_versions, every page, newest first (by creation time). A filter
    MLflow cannot parse is a ValueError that quotes it."""
    client = MlflowClient()
    out, token = [], None
    while True:
        try:
            page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        except MlflowException as err:
            raise ValueError(f"registry filter {filter_string!r} is not valid ({err.message.splitlines()[0]}); "
                             "write e.g. \"name='cifar10-resnet20-w1' and tags.seed='0'\"") from None
        out.extend(page)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda v: (v.creation_timestamp, int(v.version)), reverse=True)


def find_versions(name: str | None = None, tags: dict[str, str] | None = None) -> list[ModelVersion]:
    """Registered versions matching a name and exact tag values, newest first."""
    clauses = [f"name = '{name}'"] if name else []
    clauses += [f"tags.{k} = '{v}'" for k, v in (tags or {}).items()]
    return search_versions(" and ".join(clauses))


def split_uris(text: str) -> list[str]:
    """'models:/a/1, models:/b@newest' -> ['models:/a/1', 'models:/b@newest']."""
    return [u.strip() for u in text.split(",") if u.strip()]


def uris_matching(filter_string: str, parameter: str) -> list[str]:
    """models:/NAME/VERSION of every version a registry filter matches, newest first; an empty
    match is an error naming the `parameter` that held the filter."""
    found = search_versions(filter_string)
    if not found:
        raise ValueError(f"{parameter}={filter_string!r} matches no registered model version; check the filter in the MLflow UI")
    return [model_uri(v.name, v.version) for v in found]


def resolve_version(uri: str) -> ModelVersion:
    """models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS to a registered version."""
    match = MODEL_URI.match(uri.strip())
    if not match:
        raise ValueError(f"model {uri!r} is not a registry URI; write models:/NAME/VERSION or models:/NAME@ALIAS")
    name, version, alias = match["name"], match["version"], match["alias"]
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            versions = find_versions(name)
            if not versions:
                raise ValueError(f"model {uri!r}: registered model {name!r} has no versions")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as err:
        raise ValueError(f"model {uri!r} is not in the registry ({err.message.splitlines()[0]}); see the registered models on the UI's Models page, or with mlflow.search_registered_models()") from None


def logged_model_id(version: ModelVersion) -> str | None:
    """The id of the MLflow LoggedModel a version was registered from (its page in the UI), or
    None for versions registered before models were logged as MLflow Models."""
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None
