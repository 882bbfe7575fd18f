"""Datasets: formats users have -> canonical records (``schema``) -> checks -> token tensors.

    records = load_validated("prefs.jsonl", kind="preference")  # or DataValidationError

Readers are in ``formats`` (``read_records``), semantic checks in ``validate``, tokenization and
collation in ``tokenize``, the ``rayrlhf data validate`` command in ``cli``.
"""
from rayrlhf.data.formats import FORMATS, ReadResult, read_records
from rayrlhf.data.problems import Problem
from rayrlhf.data.validate import (
    DataValidationError,
    load_validated,
    validate_records,
    validate_source,
)

__all__ = [
    "FORMATS",
    "DataValidationError",
    "Problem",
    "ReadResult",
    "load_validated",
    "read_records",
    "validate_records",
    "validate_source",
]
