"""A custom-loop trainer whose steps take almost no compute, so dispatch cost dominates.

One dense unit on 8 random features, batch 8: a step is a few small ops on
the worker and two tiny PS round trips. The benchmarks use it to measure the
dispatch ceiling and to show what the steps-per-execution choice is worth.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

FEATURES = 8
BATCH_SIZE = 8


def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Returns an endless stream of one fixed random batch."""
    features = tf.random.stateless_normal([BATCH_SIZE, FEATURES], seed=[input_context.input_pipeline_id, 1])
    targets = tf.reduce_sum(features, axis=1)
    return tf.data.Dataset.from_tensors((features, targets)).repeat()


def build_model() -> keras.Model:
    """Returns a linear model with one output."""
    return keras.Sequential([keras.layers.Input(shape=(FEATURES,)), keras.layers.Dense(1)])


def build_optimizer() -> keras.optimizers.legacy.Optimizer:
    """Returns plain SGD."""
    return keras.optimizers.legacy.SGD(learning_rate=0.01)


def compute_loss(model: keras.Model, batch) -> tf.Tensor:
    """Returns the mean squared error of one batch."""
    features, targets = batch
    return tf.reduce_mean(tf.square(model(features, training=True)[:, 0] - targets))
