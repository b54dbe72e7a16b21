"""Dataset files: format detection, per-sample checks and streaming validation.

from tunery.datasets import validate_stream, iter_records
report = validate_stream(stream, "jsonl")          # never raises for bad data
for line, record in iter_records(stream): ...      # the training read path
"""

from __future__ import annotations

from tunery.datasets.formats import DatasetFormat, RecordFacts, check_record, detect_format
from tunery.datasets.validate import ValidationReport, iter_records, validate_stream

__all__ = [
    "DatasetFormat",
    "RecordFacts",
    "ValidationReport",
    "check_record",
    "detect_format",
    "iter_records",
    "validate_stream",
]
