"""MLflow: Lightning's `MLFlowLogger`; parameters by key path, images, artifacts, parent runs for groups."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from segcli.config.env import mlflow_experiment
from segcli.training.trackers.base import TrackedRun, Tracker, flat_params

GROUP_TAG = "segcli.group"
"""The MLflow tag that marks the parent run of a group (k-fold folds)."""


def mlflow_tracking_uri(output_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else a SQLite store in the output folder (`mlflow ui` opens it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


class MlflowTracker(Tracker):
    """Lightning's `MLFlowLogger`: parameters as flattened key paths, pictures with `log_image`, the checkpoints
    and report files as artifacts at the end. A resumed run continues its MLflow run and never logs a metric
    twice at a step."""

    label = "MLflow"

    def __init__(self, logger, uri: str, resumed: bool):
        super().__init__(logger)
        self.uri = uri
        self.resumed = resumed
        self._logged_through: dict[str, int] = {}
        """Metric key -> the last step it was logged at (by this process, or before a resume)."""

    @classmethod
    def start(cls, run: TrackedRun) -> MlflowTracker:
        from mlflow.tracking import MlflowClient
        from pytorch_lightning.loggers import MLFlowLogger

        for name in ("mlflow", "alembic"):  # a new SQLite store announces every migration it runs
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the summary names the run
        uri = mlflow_tracking_uri(run.output_dir)
        # A local store keeps its artifacts beside it; a server decides for itself.
        local = "MLFLOW_TRACKING_URI" not in os.environ
        artifacts = (run.output_dir / "mlartifacts").resolve().as_uri() if local else None
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(mlflow_experiment())
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(mlflow_experiment(),
                                                                                            artifacts)  # fmt: skip
        tags = {}
        if run.group and run.mlflow_run_id is None:
            tags["mlflow.parentRunId"] = _parent_run(client, experiment_id, run.group)
        logger = MLFlowLogger(experiment_name=mlflow_experiment(), run_name=run.name, tracking_uri=uri, tags=tags,
                              artifact_location=artifacts, run_id=run.mlflow_run_id)  # fmt: skip
        tracker = cls(logger, uri, resumed=run.mlflow_run_id is not None)
        if tracker.resumed:
            client.update_run(run.mlflow_run_id, status="RUNNING")
        tracker.log_parameters(flat_params(run.config))
        return tracker

    @property
    def client(self):
        return self.logger.experiment

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def log_parameters(self, params: dict[str, Any]) -> None:
        """MLflow parameters cannot change: a resumed run logs only the keys it did not have; a value that changed
        (`--max-epochs` of an extension) is kept as the tag `resumed/<key>`."""
        logged = self.client.get_run(self.run_id).data.params if self.resumed else {}
        for key, value in params.items():
            if key in logged and logged[key] != str(value)[:250]:
                self.client.set_tag(self.run_id, f"resumed/{key}", str(value))
        self.logger.log_hyperparams({key: value for key, value in params.items() if key not in logged})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Each key once per step: the train and val rows both carry `epoch`, and a resumed run trains again the
        epochs a killed run had trained (and logged) after its last saved state."""

        at = step or 0  # as Lightning's logger stores it

        def log() -> None:
            kept = {key: value for key, value in metrics.items() if at > self._last_step(key)}
            if kept:
                self.logger.log_metrics(kept, at)
                self._logged_through.update(dict.fromkeys(kept, at))

        self.guarded("logging metrics", log)

    def _last_step(self, key: str) -> int:
        if key not in self._logged_through:
            history = self.client.get_metric_history(self.run_id, key) if self.resumed else []
            self._logged_through[key] = max((metric.step for metric in history), default=-1)
        return self._logged_through[key]

    def log_picture(self, key, picture, step) -> None:
        self.guarded("logging a picture", lambda: self.client.log_image(self.run_id, picture, key=key, step=step))

    def log_files(self, checkpoints, report) -> None:
        for folder, paths in (("checkpoints", checkpoints), ("report", report)):
            for path in paths:
                upload = partial(self.client.log_artifact, self.run_id, str(path), folder)
                self.guarded(f"uploading {path.name}", upload)

    def close(self, status: str) -> None:
        super().close(status)

        def close_parent() -> None:  # the parent shows the state of the child that ran last
            parent = self.client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")
            if parent:
                self.client.set_terminated(parent, "FINISHED" if status == "success" else "FAILED")

        self.guarded("closing the parent run", close_parent)

    def describe(self) -> tuple[str, str]:
        if self.uri.startswith(("http://", "https://")):
            return "MLflow run", f"{self.uri.rstrip('/')}/#/experiments/{self.logger.experiment_id}/runs/{self.run_id}"
        return "MLflow run", f"{self.run_id}; see it with: mlflow ui --backend-store-uri {self.uri}"


def _parent_run(client, experiment_id: str, group: str) -> str:
    """The parent run of `group` (found by its tag, so every fold and a resume find the same one), made if new."""
    escaped = group.replace("'", "\\'")
    found = client.search_runs([experiment_id], f"tags.`{GROUP_TAG}` = '{escaped}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    return client.create_run(experiment_id, tags={GROUP_TAG: group}, run_name=group).info.run_id
