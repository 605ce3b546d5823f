"""train_tiny feeds the model the processor's float32 pixels, as Generate does at inference."""

import pytest
import torch

from llava_batch.operators.pixel_transport import expand_pixels, pixel_table
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.training.oracle import MAX_IMAGE_PIXELS
from llava_batch.training.shapes import samples
from llava_batch.training.train_tiny import IGNORE_INDEX, collate, encode_examples


def test_training_rows_carry_the_processors_float32_pixels_and_refuse_compact_uint8():
    train = samples("llava", "train", 2, seed=0)
    preprocess = PreprocessForModel("builtin:llava", max_image_pixels=MAX_IMAGE_PIXELS, compact_pixels=False)
    examples = encode_examples(preprocess, train)
    batch = collate(examples, preprocess.processor.tokenizer.pad_token_id)
    # The same values Generate gets at inference: the compact uint8 pixels expanded by the processor's table.
    compact = PreprocessForModel("builtin:llava", max_image_pixels=MAX_IMAGE_PIXELS)
    compact_examples = encode_examples(compact, train)
    table = torch.from_numpy(pixel_table(compact.processor.image_processor))
    expanded = expand_pixels(torch.from_numpy(compact_examples[0].arrays["pixel_values"]), table)
    assert batch["pixel_values"].dtype == torch.float32
    torch.testing.assert_close(batch["pixel_values"][0], expanded[0], rtol=0, atol=0)
    assert float(batch["pixel_values"].min()) < -1 and float(batch["pixel_values"].max()) < 3  # normalised
    # Labels cover the answer and end-of-sequence only.
    assert (batch["labels"][0] != IGNORE_INDEX).sum() == len(examples[0].answer_ids)

    # The pipeline's default compact transport sends uint8 pixels that only Generate expands: refused here.
    with pytest.raises(ValueError, match="compact_pixels=False"):
        collate(compact_examples, compact.processor.tokenizer.pad_token_id)
