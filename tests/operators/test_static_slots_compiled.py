"""--compile for real: torch.compile of the static-slot decoding step on this CPU (about a minute for a tiny
model, hence the slow tier). The compiled step gives the texts of the plain batched call, and a second call of the
same shape runs the compiled step again without compiling anything new."""

import numpy as np
import pytest
import torch

from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from tests.operators.test_continuous_batching import MAX_NEW_TOKENS, ROWS, raw_batch

pytestmark = pytest.mark.slow


def test_a_compiled_static_slot_step_generates_the_plain_texts_and_compiles_once(tiny_models):
    from torch._dynamo.utils import counters

    model = str(tiny_models["llava"])
    prepared = PreprocessForModel(model, max_image_pixels=10**8)(raw_batch())
    kwargs = {"generate_kwargs": {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}, "dtype": "float32"}
    plain = Generate(model, rows_per_call=ROWS, continuous_batching=False, **kwargs)(prepared)
    torch._dynamo.reset()
    compiled = Generate(model, rows_per_call=3, compile=True, **kwargs)
    first = compiled(prepared)
    assert list(first["generated_text"]) == list(plain["generated_text"])
    assert all(isinstance(text, str) and text for text in first["generated_text"])
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the step was compiled
    step = next(iter(compiled.slot_steps.steps.values()))
    # The compiled wrapper runs, not the eager method (two bound methods of one method compare equal).
    assert step.step != step._step
    # Other rows of the same shape: same buffers, same compiled graph.
    half = {name: np.asarray(values)[: ROWS // 2] for name, values in prepared.items()}
    second = compiled(half)
    assert list(second["generated_text"]) == list(plain["generated_text"][: ROWS // 2])
    assert counters["stats"]["unique_graphs"] == graphs
