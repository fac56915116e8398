"""The Keras models training builds: one member (the small CNN, or the HOG front end with its head) and
the ensemble that averages the members inside one model."""

from __future__ import annotations

import numpy as np

from training.fit.hog import hog_features, hog_head
from training.fit.options import TrainConfig


def build_model(config: TrainConfig, n_classes: int, prefix: str = ""):
    """A small grayscale CNN: conv/pool stages, one last conv (Grad-CAM's target), GAP, dropout, softmax.

    Without BatchNormalization by default: on these small datasets (a few hundred images, a
    handful of patients per validation split) BatchNorm made training erratic, and the plain
    network won a block-grouped cross-validation (see the IQ-OTH preset's recipe selection).
    ``prefix`` keeps layer names unique when ensemble members are assembled into one model.
    """
    import keras
    from keras import layers

    size = config.image_size
    if config.architecture == "hog":
        inputs = keras.Input((size, size, 1), name="image")
        features = layers.Dropout(config.dropout, name=prefix + "dropout")(hog_features(inputs, config))
        outputs = hog_head(n_classes, prefix)(features)
        return keras.Model(inputs, outputs, name=f"{prefix}{config.name.replace('-', '_').replace('.', '_')}_hog")
    inputs = keras.Input((size, size, 1), name="image")
    x = inputs
    stages = [*config.filters, config.last_filters]
    for stage, filters in enumerate(stages, start=1):
        last = stage == len(stages)
        name = "last_conv" if last else f"conv{stage}"
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm, name=prefix + name)(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}bn{stage}")(x)
        x = layers.ReLU(name=f"{prefix}relu{stage}")(x)
        if not last:
            x = layers.MaxPooling2D(name=f"{prefix}pool{stage}")(x)
    x = layers.GlobalAveragePooling2D(name=prefix + "gap")(x)
    x = layers.Dropout(config.dropout, name=prefix + "dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name=prefix + "probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{prefix}{config.name.replace('-', '_').replace('.', '_')}_{size}")


def assemble_ensemble(members: list, config: TrainConfig, n_classes: int):
    """One inference model that averages the members' softmax outputs.

    Each member's conv layers run on the shared input; their last conv maps are concatenated into
    one 4D layer ``last_conv`` (Grad-CAM's target, so a heatmap covers every member), pooled, and
    member k's dense head sees only its own channels (zero weights elsewhere). Only standard layers:
    the bundle stays one ``model.h5`` that any Keras (or converter) loads. A single member is
    returned unchanged.
    """
    import keras
    from keras import layers

    if len(members) == 1:
        return members[0]
    size = config.image_size
    inputs = keras.Input((size, size, 1), name="image")
    if config.architecture == "hog":  # one frozen front end is every member's: only the heads differ
        features = hog_features(inputs, config)
        outputs = []
        for k, member in enumerate(members):
            head = layers.Dense(n_classes, activation="softmax", name=f"member{k + 1}_probabilities")
            outputs.append(head(features))
            head.set_weights(member.get_layer(f"m{k + 1}_probabilities").get_weights())
        averaged = layers.Average(name="probabilities")(outputs)
        return keras.Model(
            inputs, averaged, name=f"{config.name.replace('-', '_').replace('.', '_')}_hog_x{len(members)}"
        )
    maps, heads = [], []
    for k, member in enumerate(members):
        x = inputs
        for layer in member.layers:
            if isinstance(layer, layers.InputLayer):
                continue
            if layer.name == f"m{k + 1}_gap":
                break
            x = layer(x)
        maps.append(x)
        heads.append(member.get_layer(f"m{k + 1}_probabilities").get_weights())
    features = layers.Concatenate(axis=-1, name="last_conv")(maps)
    pooled = layers.GlobalAveragePooling2D(name="gap")(features)
    width = config.last_filters
    outputs = []
    for k, (kernel, bias) in enumerate(heads):
        head = layers.Dense(n_classes, activation="softmax", name=f"member{k + 1}_probabilities")
        head.build((None, width * len(members)))
        full = np.zeros((width * len(members), n_classes), np.float32)
        full[k * width : (k + 1) * width] = kernel
        head.set_weights([full, bias])
        outputs.append(head(pooled))
    averaged = layers.Average(name="probabilities")(outputs)
    name = f"{config.name.replace('-', '_').replace('.', '_')}_{size}_x{len(members)}"
    return keras.Model(inputs, averaged, name=name)
