"""Schema extensions, one concept per module; ``aicm.schema.build_schema`` lists them in order."""
