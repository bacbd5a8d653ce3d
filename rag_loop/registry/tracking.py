"""Log index versions and evaluations as MLflow runs, through an explicit MlflowClient (no
global state). With a local tracking store, artifacts go under `artifact_root` (the data
dir), never into the working directory."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rag_loop.errors import BackendUnavailable, NotFound, RagLoopError, UpstreamError

log = logging.getLogger(__name__)

INDEX_EXPERIMENT = "index-versions"
EVAL_EXPERIMENT = "evaluations"
TRAINING_EXPERIMENT = "training"
LOOP_EXPERIMENT = "loop-cycles"


class MlflowTracker:
    def __init__(
        self,
        tracking_uri: str,
        experiment_prefix: str,
        *,
        enabled: bool = True,
        artifact_root: Path | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_prefix = experiment_prefix
        self.enabled = enabled
        # a tracking server decides where artifacts go; a local store would pick ./mlruns
        local = tracking_uri.startswith(("sqlite:", "file:", "/"))
        self.artifact_root = artifact_root.resolve() if artifact_root and local else None
        self._client: Any = None
        self._experiments: dict[str, str] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def experiment_id(self, short_name: str) -> str:
        name = f"{self.experiment_prefix}/{short_name}"
        if name not in self._experiments:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                location = None
                if self.artifact_root is not None:
                    location = (self.artifact_root / short_name).as_uri()
                self._experiments[name] = self.client.create_experiment(
                    name, artifact_location=location
                )
            else:
                self._experiments[name] = experiment.experiment_id
        return self._experiments[name]

    def log_run(
        self,
        experiment: str,
        run_name: str,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        artifacts: dict[str, Any] | None = None,
        status: str = "FINISHED",
    ) -> str | None:
        """Create a finished (or FAILED) run with its params, metrics, tags and artifacts
        (file name -> text, or a JSON-able value); returns its id (None when disabled)."""
        if not self.enabled:
            return None
        from mlflow.entities import Metric, Param, RunTag

        try:
            run = self.client.create_run(
                self.experiment_id(experiment), run_name=run_name, tags=tags or {}
            )
            now = int(time.time() * 1000)
            self.client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in (tags or {}).items()],
            )
            for file_name, content in (artifacts or {}).items():
                if isinstance(content, str):
                    self.client.log_text(run.info.run_id, content, file_name)
                else:
                    text = json.dumps(content, indent=1, default=str, ensure_ascii=False)
                    self.client.log_text(run.info.run_id, text, file_name)
            self.client.set_terminated(run.info.run_id, status)
        except Exception as exc:
            raise registry_failure(f"log to MLflow at {self.tracking_uri}", exc) from exc
        return str(run.info.run_id)

    def get_run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def find_run(self, experiment: str, tag: str, value: str) -> str | None:
        """The id of a finished run of `experiment` tagged `tag=value` (the outbox's way to
        apply an entry twice without logging its run twice)."""
        if not self.enabled:
            return None
        try:
            runs = self.client.search_runs(
                [self.experiment_id(experiment)],
                filter_string=f"tags.`{tag}` = '{value}'",
                max_results=10,
            )
            for run in runs:
                if run.info.status != "RUNNING":
                    return str(run.info.run_id)
                self.client.delete_run(run.info.run_id)  # cut off half-way: log it again
        except Exception as exc:
            raise registry_failure("search MLflow runs", exc) from exc
        return None

    def model_version_of_run(self, name: str, run_id: str) -> str | None:
        """The registered version of `name` created from `run_id`, if any."""
        if not self.enabled:
            return None
        try:
            found = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        except Exception as exc:
            raise registry_failure("search MLflow model versions", exc) from exc
        return str(found[0].version) if found else None

    def has_dataset(self, run_id: str, digest: str) -> bool:
        try:
            run = self.get_run(run_id)
        except Exception as exc:
            raise registry_failure(f"read the MLflow run {run_id}", exc) from exc
        inputs = getattr(run, "inputs", None)
        return any(d.dataset.digest == digest for d in (inputs.dataset_inputs if inputs else []))

    def log_dataset(
        self,
        run_id: str,
        rows: list[dict[str, Any]],
        *,
        name: str,
        digest: str,
        source: str,
        context: str,
    ) -> None:
        """Record `rows` as an MLflow dataset input of a run (its schema, digest and
        source; the rows themselves are the run's artifact)."""
        if not self.enabled:
            return
        import warnings

        import mlflow.data
        import pandas as pd
        from mlflow.entities import Dataset, DatasetInput, InputTag

        try:
            with warnings.catch_warnings():
                # MLflow registers the local source twice ("" and "file") and says so
                warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
                dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
                    pd.DataFrame(rows), source=source, name=name, digest=digest
                )
            self.client.log_inputs(
                run_id,
                datasets=[
                    DatasetInput(
                        Dataset(**dataset.to_dict()),
                        tags=[InputTag("mlflow.data.context", context)],
                    )
                ],
            )
        except Exception as exc:
            raise registry_failure("log a dataset to MLflow", exc) from exc

    def register_model(
        self,
        name: str,
        folder: Path,
        *,
        run_id: str,
        tags: dict[str, str],
        description: str = "",
        packaged: bool = False,
    ) -> str | None:
        """Store a model folder as the run's `model` artifact and register it as a new
        version of `name` in the model registry; returns the version number. A `packaged`
        model (weights installed with a package, the same on every machine) is registered
        by reference on a local tracking store instead of copied; a server needs the copy
        (it accepts no local source)."""
        if not self.enabled:
            return None
        from mlflow.exceptions import MlflowException

        if not (packaged and self.artifact_root is not None) and not folder.is_dir():
            raise NotFound(f"cannot register {name} in MLflow: the model folder {folder} is gone")
        try:
            try:
                self.client.get_registered_model(name)
            except MlflowException:
                self.client.create_registered_model(
                    name, description="Embedders of rag-loop: the base and fine-tuned ones."
                )
            if packaged and self.artifact_root is not None:
                source = folder.resolve().as_uri()
            else:
                self.client.log_artifacts(run_id, str(folder), "model")
                source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
            version = self.client.create_model_version(
                name, source=source, run_id=run_id, tags=tags, description=description
            )
        except Exception as exc:
            raise registry_failure(f"register {name} in MLflow", exc) from exc
        return str(version.version)

    def set_model_alias(self, name: str, alias: str, version: str) -> None:
        if not self.enabled:
            return
        try:
            self.client.set_registered_model_alias(name, alias, version)
        except Exception as exc:
            raise registry_failure(f"move the MLflow alias {alias}", exc) from exc

    def model_alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at (None: no such alias or model)."""
        if not self.enabled:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None


# 4xx answers about the server or the credentials, not the request: every entry would get them
_NOT_ABOUT_THE_REQUEST = {401, 403, 408, 429}


def registry_failure(what: str, exc: Exception) -> RagLoopError:
    """Why an MLflow call failed, for the outbox: MLflow refused the request (a 4xx: what
    was sent is wrong, and sending it again soon will not help; only this entry waits), or
    MLflow could not be reached, failed itself, refused the credentials or asked to slow
    down (anything else: every MLflow entry waits)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        if 400 <= status < 500 and status not in _NOT_ABOUT_THE_REQUEST:
            return UpstreamError(f"MLflow refused: cannot {what}: {exc.message}")
    return BackendUnavailable(f"cannot {what}: {exc}")
