"""`segcli schema`: the JSON Schema of experiment files, for editors."""

from __future__ import annotations

import json

import typer


def schema() -> None:
    """Print the JSON Schema of experiment files (generated from segcli's own validation models).

    Save it (`segcli schema > segcli.schema.json`) and put
    `# yaml-language-server: $schema=segcli.schema.json` on the first line of an experiment file.
    """
    from segcli.config.json_schema import experiment_file_json_schema

    typer.echo(json.dumps(experiment_file_json_schema(), indent=2))
