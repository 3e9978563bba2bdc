"""Human-readable lines of a status dict, for `tfps-ha status`."""

from __future__ import annotations

from typing import Any

from tfps_ha.exit_codes import describe


def format_status(status: dict[str, Any]) -> str:
    """Returns the status as a few lines of text: job, progress, checkpoint, leader, then one line per task."""
    lines = [_job_line(status), _progress_line(status), _checkpoint_line(status), _leader_line(status)]
    lines.append("Tasks:")
    width = max((len(name) for name in status["tasks"]), default=8)
    for name, task in status["tasks"].items():
        lines.append("  " + _task_line(name, task, width, status["time"]))
    if not status["tasks"]:
        lines.append("  (none recorded yet)")
    return "\n".join(lines)


def _job_line(status: dict[str, Any]) -> str:
    state = status["job_state"]
    text = f"Job in {status['workdir']}: {state}"
    if state == "interrupted":
        text += " (the launcher was killed before it wrote a summary; run the same launch again to resume)"
    if status["exit_reason"]:
        text += f" (exit {status['exit_code']} {status['exit_reason']})"
    if status["message"]:
        text += f". {status['message']}"
    return text


def _progress_line(status: dict[str, Any]) -> str:
    step, target = status["step"], status["target_step"]
    if step is None:
        text = "Progress: no step recorded yet"
    elif target:
        text = f"Progress: step {step}/{target} ({100.0 * step / target:.0f}%)"
    else:
        text = f"Progress: step {step}"
    rate = status["steps_per_second"]
    text += f", {rate:.1f} steps/s" if rate is not None else ", steps/s unknown"
    if status["eta_seconds"] is not None:
        text += f", ETA {status['eta_seconds']:.0f} s"
    loss = status["loss"]
    text += f", loss {loss:.4f}" if loss is not None else ", loss n/a"
    if status["heartbeat_age_seconds"] is not None:
        text += f"; heartbeat {_age(status['heartbeat_age_seconds'])} old (phase {status['phase']})"
    text += f"; restarts {status['restarts_total']}"
    if status["chaos_kills"]:
        text += f", chaos kills {status['chaos_kills']}"
    if status["lost_steps"]:
        text += f"; lost steps {status['lost_steps']}"
    return text + "."


def _checkpoint_line(status: dict[str, Any]) -> str:
    checkpoint = status["checkpoint"]
    if checkpoint is None:
        return "Checkpoint: none yet."
    step = checkpoint["step"] if checkpoint["step"] is not None else "unknown"
    text = f"Checkpoint: step {step}"
    if checkpoint["age_seconds"] is not None:
        text += f", saved {_age(checkpoint['age_seconds'])} ago"
    if checkpoint["duration_seconds"] is not None:
        text += f" in {checkpoint['duration_seconds']:.2f} s"
    return text + f" ({checkpoint['path']})."


def _leader_line(status: dict[str, Any]) -> str:
    leader = status["leader"]
    failovers = status["failovers"]
    if leader is None:
        epoch = status["leader_epoch"]
        epoch_text = f"epoch {epoch}" if epoch is not None else "epoch unknown"
        return f"Leader: no lease file ({epoch_text}); failovers {failovers}."
    expires = leader["expires_in_seconds"]
    if expires is None:
        expiry = "expiry unknown"
    elif expires >= 0:
        expiry = f"expires in {expires:.1f} s"
    else:
        expiry = f"expired {-expires:.1f} s ago"
    return f"Leader: {leader['holder']}, epoch {leader['epoch']}, {expiry}; failovers {failovers}."


def _task_line(name: str, task: dict[str, Any], width: int, now: float) -> str:
    text = f"{name:<{width}}  {task['state']:<9}  attempt {max(task['attempt'], 0)}"
    if task["since"] is not None:
        text += f", for {_age(now - task['since'])}"
    text += f", restarts {task['restarts']}"
    if task["restarts_by_cause"]:
        causes = ", ".join(f"{cause} {count}" for cause, count in sorted(task["restarts_by_cause"].items()))
        text += f" ({causes})"
    if task["last_signal"]:
        text += f", last exit by {task['last_signal']}"
    elif task["last_exit_code"]:
        text += f", last exit {describe(task['last_exit_code'])}"
    if task["address"]:
        text += f"  {task['address']}"
    return text


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
