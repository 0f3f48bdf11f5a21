"""Type stub of the compiled Honeycomb and OTLP body encoders (``_batch_json.pyx``).

``encode`` raises ``errors.LeftToPython`` for a batch the Python encoder must write.
"""

from collections.abc import Sequence

from .model import SpanRecord

class HoneycombEncoder:
    implementation: str
    service_name: str

    def __init__(self, service_name: str) -> None: ...
    def encode(self, spans: Sequence[SpanRecord]) -> tuple[bytes, list[int]]: ...

class OtlpEncoder:
    implementation: str
    head: bytes
    tail: bytes

    def __init__(self, head: bytes, tail: bytes) -> None: ...
    def encode(self, spans: Sequence[SpanRecord]) -> tuple[bytes, list[int]]: ...
