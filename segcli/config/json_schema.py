"""The experiment file as a JSON Schema, for editors (`segcli schema`): completion and validation as you type,
derived from the Pydantic models of schema.py."""

from __future__ import annotations

from typing import Any

from segcli.config.distribution import SearchDistribution
from segcli.config.schema import Experiment


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "required": []}


def experiment_file_json_schema() -> dict[str, Any]:
    """JSON Schema of a whole experiment file, for editors (completion and validation as you type).

    `defaults` and each experiment are partial experiments: every key optional, `model` keys too.
    """
    experiment = Experiment.model_json_schema(ref_template="#/$defs/{model}")
    definitions = experiment.pop("$defs")
    definitions["ModelConfigPartial"] = _optional(definitions["ModelConfig"])
    partial = _optional(experiment)
    partial["properties"] = {
        **partial["properties"],
        "model": {"$ref": "#/$defs/ModelConfigPartial"},
        "loss": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/LossTerm"}]}},
                {"$ref": "#/$defs/LossConfig"},
            ]
        },
        "monitor": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/MonitorConfig"}]},
    }
    definitions["ExperimentKeys"] = partial
    search = SearchDistribution.model_json_schema(ref_template="#/$defs/{model}")
    definitions.update(search.pop("$defs", {}))
    definitions["SearchDistribution"] = search
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "segcli experiment file",
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "experiments"],
        "properties": {
            "model": {"$ref": "#/$defs/ModelConfig"},
            "defaults": {"$ref": "#/$defs/ExperimentKeys"},
            "experiments": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"anyOf": [{"$ref": "#/$defs/ExperimentKeys"}, {"type": "null"}]},
            },
            "search": {"type": "object", "additionalProperties": {"$ref": "#/$defs/SearchDistribution"}},
        },
        "$defs": definitions,
    }
