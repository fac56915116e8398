"""Fitting the ensemble's members: member k trains without fold k of the training split, through a
seeded tf.data pipeline (with its augmentation) and Keras' fit, or, for the HOG recipe, a logistic
regression on the frozen features."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from training.fit.hog import fit_hog_head
from training.fit.networks import build_model
from training.fit.options import TrainConfig
from training.measure.metrics import balanced_class_weights


def member_folds(labels: np.ndarray, members: int) -> list[np.ndarray]:
    """Training indices of each member: all but fold k, folds being contiguous chunks of each class.

    The training split is ordered by class and file number, so a contiguous chunk holds whole runs of
    neighbouring slices (patients, approximately) and members see different patients.
    """
    if members == 1:
        return [np.arange(len(labels))]
    folds = np.zeros(len(labels), int)
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        for k, chunk in enumerate(np.array_split(indices, members)):
            folds[chunk] = k
    return [np.flatnonzero(folds != k) for k in range(members)]


def fit_members(
    config: TrainConfig,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    class_weight: dict,
    log_dir: Path,
) -> tuple[list, list[dict]]:
    """Train the ensemble's members, member k without fold k; returns them and their Keras histories."""
    import keras

    members, histories = [], []
    for k, indices in enumerate(member_folds(y_fit, config.ensemble)):
        seed = config.seed + k
        keras.utils.set_random_seed(seed)
        member = build_model(config, n_classes, prefix=f"m{k + 1}_" if config.ensemble > 1 else "")
        if config.ensemble > 1:
            print(f"member {k + 1}/{config.ensemble}: {len(indices)} training images, seed {seed}", flush=True)
        if config.architecture == "hog":  # a convex fit, no epochs: scikit-learn's logistic regression
            fit_hog_head(member, x_fit[indices], y_fit[indices], n_classes, seed)
            members.append(member)
            continue
        steps = config.epochs * int(np.ceil(len(indices) / config.batch_size))
        rate = (
            keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
            if config.lr_schedule == "cosine"
            else config.learning_rate
        )
        member.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
        train_ds, val_ds = make_datasets(x_fit[indices], y_fit[indices], x_val, y_val, config, n_classes, seed)
        member_log = log_dir / f"member{k + 1}" if config.ensemble > 1 else log_dir
        callbacks = [cb for cb in [_tensorboard_callback(member_log)] if cb is not None]
        if config.patience > 0:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=config.patience,
                    restore_best_weights=True,
                    start_from_epoch=config.warmup_epochs,
                )
            )
        history = member.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            class_weight=class_weight,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            verbose=1 if sys.stdout.isatty() else 2,  # a progress bar on a terminal, one line per epoch in logs
        )
        members.append(member)
        histories.append(history.history)
    return members, histories


def make_datasets(x_train, y_train, x_val, y_val, config: TrainConfig, n_classes: int, seed: int):
    """tf.data pipelines: shuffled (and augmented) one-hot training batches; class-weighted validation."""
    import keras
    import tensorflow as tf
    from keras import layers

    train = tf.data.Dataset.from_tensor_slices((x_train, np.eye(n_classes, dtype=np.float32)[y_train])).shuffle(
        len(x_train), seed=seed, reshuffle_each_iteration=True
    )
    train = train.batch(config.batch_size)
    if config.augment == "light":
        augment = keras.Sequential(
            [
                layers.RandomFlip("horizontal", seed=seed),
                layers.RandomRotation(0.03, fill_mode="constant", seed=seed + 1),
                layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
                layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
                layers.RandomBrightness(0.05, value_range=(0.0, 1.0), seed=seed + 4),
                layers.RandomContrast(0.15, value_range=(0.0, 1.0), seed=seed + 5),
            ],
            name="augment",
        )

        def apply(images, labels):
            return tf.clip_by_value(augment(images, training=True), 0.0, 1.0), labels

        train = train.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif config.augment == "strong":
        train = train.map(strong_augmentation(seed), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    train = train.prefetch(tf.data.AUTOTUNE)
    # Validation loss weighted per class, so its curve follows the balanced objective.
    weights = balanced_class_weights(y_val, n_classes)
    val_weights = np.array([weights[int(y)] for y in y_val], dtype=np.float32)
    validation = tf.data.Dataset.from_tensor_slices(
        (x_val, np.eye(n_classes, dtype=np.float32)[y_val], val_weights)
    ).batch(128)
    return train, validation


def strong_augmentation(seed: int):
    """Geometric plus intensity augmentation: what another scanner, window or export changes."""
    import keras
    import tensorflow as tf
    from keras import layers

    geometry = keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom(0.12, fill_mode="constant", seed=seed + 2),
            layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 3),
        ],
        name="augment_geometry",
    )
    gaussian = np.exp(-0.5 * (np.arange(-2, 3) / 0.8) ** 2)
    gaussian = np.outer(gaussian, gaussian) / np.outer(gaussian, gaussian).sum()
    blur_kernel = tf.constant(gaussian[:, :, None, None], tf.float32)
    generator = tf.random.Generator.from_seed(seed + 10)

    def apply(images, labels):
        images = geometry(images, training=True)
        batch = tf.shape(images)[0]
        gamma = tf.exp(generator.uniform((batch, 1, 1, 1), -0.4, 0.4))
        images = tf.clip_by_value(images, 0.0, 1.0) ** gamma
        black = generator.uniform((batch, 1, 1, 1), -0.1, 0.15)
        white = generator.uniform((batch, 1, 1, 1), 0.85, 1.1)
        images = (images - black) / (white - black)
        blurred = tf.nn.conv2d(images, blur_kernel, strides=1, padding="SAME")
        images = tf.where(generator.uniform((batch, 1, 1, 1)) < 1.0 / 3.0, blurred, images)
        sigma = generator.uniform((batch, 1, 1, 1), 0.0, 0.04)
        images = images + sigma * generator.normal(tf.shape(images))
        return tf.clip_by_value(images, 0.0, 1.0), labels

    return apply


def _tensorboard_callback(log_dir: Path):
    import keras

    if importlib.util.find_spec("tensorboard") is None:  # tf.summary needs the tensorboard package
        print("TensorBoard is not installed: no logs written (pip install -r requirements.txt)", file=sys.stderr)
        return None
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)
