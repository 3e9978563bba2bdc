"""Synchronous data-parallel training with TensorFlow's MultiWorkerMirroredStrategy (MWMS).

Every worker keeps a copy of every variable, computes gradients on its own
batch, and the workers all-reduce the gradients before each update. There is
no parameter server and no coordinator process: each worker runs the
trainer's `fit` itself, and the MWMS chief (`chief:0` when the cluster has a
chief, else `worker:0`) writes the checkpoints, the heartbeat and the result.

A worker cannot continue without a peer, so the launcher's
`tfps_ha.supervisor.group.GroupSupervisor` restarts the whole group when one
worker dies, and every worker resumes from the same checkpoint.
"""
