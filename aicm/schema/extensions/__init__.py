"""Schema extensions, one class per module; ``aicm.schema.build_schema`` lists them."""
