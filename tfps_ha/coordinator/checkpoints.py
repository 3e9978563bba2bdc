"""Checkpoint restore that falls back past a truncated or corrupted checkpoint."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def restore_with_fallback(tf, checkpoint, manager) -> str | None:
    """Restores the newest readable checkpoint that `manager` lists.

    A checkpoint whose files are truncated or corrupted raises on restore; it
    is logged and skipped, and the next older one is tried.

    Args:
      tf: The TensorFlow module.
      checkpoint: The `tf.train.Checkpoint` to restore into.
      manager: The `tf.train.CheckpointManager` over the checkpoint folder.

    Returns:
      The path restored, or None when no checkpoint exists (a fresh start).

    Raises:
      RuntimeError: Checkpoints exist but none of them can be read; nothing is
        deleted, so they can be inspected.
    """
    candidates = list(reversed(manager.checkpoints))
    if not candidates:
        return None

    failures = []
    for path in candidates:
        try:
            checkpoint.restore(path).expect_partial()
        except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
            # A truncated file raises IndexError ("Read less bytes than requested")
            # from the checkpoint reader in TF 2.21, not an OpError.
            reason = str(error).strip().splitlines()[0][:200]
            logger.warning("Checkpoint %s cannot be restored (%s); trying the previous one.", path, reason)
            failures.append(f"{path}: {reason}")
            continue
        if failures:
            logger.warning("Restored the older checkpoint %s because newer ones were unreadable.", path)
        else:
            logger.info("Restored checkpoint %s.", path)
        return path

    raise RuntimeError(
        "none of the checkpoints can be restored; they were left in place for inspection: "
        + "; ".join(failures)
    )
