import numpy as np
import pyarrow as pa

from llava_batch.pipeline.run.columns import to_arrow


def test_all_none_columns_keep_their_declared_type():
    table = to_arrow(
        {
            "id": np.array(["a", "b"], dtype=object),
            "error": np.array([None, None], dtype=object),
            "prompt_id": np.array([np.nan, np.nan], dtype=np.float32),  # how Ray hands back a null column
            "num_output_tokens": np.array([None, 3], dtype=object),
            "image_bytes": np.array([None, np.array([b"x", b"y"], dtype=object)], dtype=object),
            "category": np.array(["cat", None], dtype=object),
        }
    )
    assert table.schema.field("error").type == pa.string()
    assert table.schema.field("prompt_id").type == pa.string()
    assert table.column("prompt_id").to_pylist() == [None, None]
    assert table.schema.field("num_output_tokens").type == pa.int64()
    assert table.column("image_bytes").to_pylist() == [None, [b"x", b"y"]]
    assert table.column("category").to_pylist() == ["cat", None]
