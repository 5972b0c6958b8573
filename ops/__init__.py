"""Operations: the ``cardline`` CLI, configuration, logging, the embedded line, benchmarks."""
