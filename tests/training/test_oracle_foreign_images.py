"""The shipped llava checkpoint on images drawn by another program, not by training/shapes.py.

tests/support/foreign_shapes.py draws the llava task's images with its own conventions (flat, vertical or radial
backgrounds, shapes from a fifth to most of the short side, 64-224 pixels, 3:4 to 5:4, anti-aliased, PNG or
JPEG). Through the pipeline's own operators (PreprocessForModel + Generate, float32, greedy, no Ray) the
checkpoint names the colour and the position of such shapes but often not the shape: it learnt shapes of one
size range from one drawer (training/README.md, "Images drawn by another program"). The bars hold what it does
today, per attribute, so a retrain or a pipeline change that reads these images worse fails; a retrain on a wider
distribution should raise them (the goal is >= 0.9 exact match).
"""

from __future__ import annotations

import pytest

from llava_batch.operators.model_source import builtin_model_path
from llava_batch.training.oracle import oracle_operators, predict
from llava_batch.training.shapes import PROMPTS
from tests.support.foreign_shapes import attribute_accuracy, foreign_images, pipeline_rows

IMAGES = 96
SEED = 11  # not the seed of the 200-image measurement in training/README.md (7)
# Measured 2026-12-02 on these 96 images with the shipped checkpoint (PROMPTS cycled over the images): exact
# 0.979, shape 0.990, colour 0.990, position 1.0 (the checkpoint before the wider training distribution: 0.510,
# 0.552, 0.938, 0.854). The bars leave room for two or three rows of float noise between machines, and fail the
# old checkpoint on every attribute but colour.
AT_LEAST = {"exact": 0.93, "shape": 0.94, "colour": 0.94, "position": 0.96}


# About 19 s of model calls: a model-quality guard, run by CI in the slow tier.
@pytest.mark.slow
def test_the_llava_checkpoint_on_shapes_another_program_drew():
    images = foreign_images(IMAGES, SEED)
    preprocess, generate = oracle_operators(str(builtin_model_path("llava")))
    prompts = PROMPTS["llava"]
    # Every prompt of the task, each on a quarter of the images.
    texts: list[str | None] = [None] * IMAGES
    for k, prompt in enumerate(prompts):
        indices = list(range(k, IMAGES, len(prompts)))
        answers = predict(preprocess, generate, pipeline_rows([images[i] for i in indices], prompt))
        for index, text in zip(indices, answers, strict=True):
            texts[index] = text
    scores = attribute_accuracy(texts, images)
    mistakes = [(text, image.answer) for text, image in zip(texts, images) if text != image.answer][:8]
    for name, bar in AT_LEAST.items():
        assert scores[name] >= bar, f"{name} {scores[name]:.3f} < {bar}: {mistakes}"
