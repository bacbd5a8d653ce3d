"""Log index versions as MLflow runs, through an explicit MlflowClient (no global state)."""

from __future__ import annotations

import logging
import time
from typing import Any

from rag_loop.errors import BackendUnavailable

log = logging.getLogger(__name__)

INDEX_EXPERIMENT = "index-versions"


class MlflowTracker:
    def __init__(self, tracking_uri: str, experiment_prefix: str, *, enabled: bool = True):
        self.tracking_uri = tracking_uri
        self.experiment_prefix = experiment_prefix
        self.enabled = enabled
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
            self._experiments[name] = (
                experiment.experiment_id if experiment else self.client.create_experiment(name)
            )
        return self._experiments[name]

    def log_run(
        self,
        experiment: str,
        run_name: str,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
    ) -> str | None:
        """Create a finished run; returns its id (None when MLflow logging is disabled)."""
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
            self.client.set_terminated(run.info.run_id, "FINISHED")
        except Exception as exc:
            raise BackendUnavailable(f"cannot log to MLflow at {self.tracking_uri}: {exc}") from exc
        return str(run.info.run_id)

    def get_run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)
