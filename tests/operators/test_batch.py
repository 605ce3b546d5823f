import numpy as np
import pytest

from llava_batch.operators.batch import MissingColumnsError, column, require_columns


def test_column_treats_ray_null_columns_as_missing():
    # Ray delivers an all-None column as float32 NaN; a NaN error must read as "no error".
    batch = {"error": np.array([np.nan, np.nan], dtype=np.float32)}
    assert column(batch, "error", 2).tolist() == [None, None]


def test_column_keeps_values_and_defaults_to_none():
    batch = {"error": np.array(["bad", None], dtype=object)}
    assert column(batch, "error", 2).tolist() == ["bad", None]
    assert column(batch, "absent", 3).tolist() == [None, None, None]


def test_missing_columns_name_the_stage_and_the_columns():
    with pytest.raises(MissingColumnsError, match=r"stage 'generate' needs column\(s\) \['model_inputs'\]"):
        require_columns({"id": np.array(["a"])}, ["id", "model_inputs"], stage="generate")
