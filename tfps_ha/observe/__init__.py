"""Observability of a job from the files in its working folder.

Entry points:
  * `status.status_from_workdir` and `status.WorkdirStatus`: the status dict.
  * `health.check_health` and `health.check_readiness`: probe verdicts.
  * `http.StatusServer` and `http.serve_workdir`: `/healthz`, `/readyz`,
    `/status` and `/metrics` on a background thread.
  * `checkpoint_log.record_checkpoint`: one line per checkpoint save, with
    its duration, for the coordinator to append.
  * `report.write_report`: a PNG timeline of a run.
  * `tensorboard.ScalarWriter`: TensorBoard scalars.

None of these modules imports TensorFlow, except `tensorboard`, which imports
it when a writer is created.
"""
