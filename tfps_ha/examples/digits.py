"""Keras `fit` on scikit-learn's bundled handwritten digits (8x8 images, 10 classes).

The data ships inside scikit-learn, so nothing is downloaded. A fixed, seeded
split keeps 360 of the 1,797 images out of training; `evaluate` reports the
accuracy on them.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
import tf_keras as keras

HELD_OUT = 360
SEED = 20261204
BATCH_SIZE = 64


@functools.lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype("float32")
    labels = labels.astype("int64")
    order = np.random.default_rng(SEED).permutation(len(labels))
    test, train = order[:HELD_OUT], order[HELD_OUT:]
    return images[train], labels[train], images[test], labels[test]


def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Returns one worker's shuffled, repeated training batches."""
    train_images, train_labels, _, _ = _split()
    batch_size = input_context.get_per_replica_batch_size(BATCH_SIZE)
    dataset = tf.data.Dataset.from_tensor_slices((train_images, train_labels))
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset.shuffle(2048, seed=SEED).repeat().batch(batch_size).prefetch(2)


def build_model() -> keras.Model:
    """Returns a compiled two-layer classifier with a legacy Adam optimizer."""
    model = keras.Sequential([
        keras.layers.Input(shape=(64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(
        optimizer=keras.optimizers.legacy.Adam(learning_rate=0.003),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def evaluate(model: keras.Model) -> dict[str, float]:
    """Returns the held-out accuracy and loss, computed on the coordinator."""
    _, _, test_images, test_labels = _split()
    logits = model(test_images, training=False).numpy()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(test_labels, logits)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == test_labels))
    return {"heldout_accuracy": accuracy, "heldout_loss": float(loss)}
