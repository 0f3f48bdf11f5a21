from collections.abc import Sequence

from .model import SpanRecord

class HoneycombEncoder:
    implementation: str
    service_name: str

    def __init__(self, service_name: str) -> None: ...
    def encode(self, spans: Sequence[SpanRecord]) -> tuple[bytes, list[int]] | None: ...

class OtlpEncoder:
    implementation: str
    head: bytes
    tail: bytes

    def __init__(self, head: bytes, tail: bytes) -> None: ...
    def encode(self, spans: Sequence[SpanRecord]) -> tuple[bytes, list[int]] | None: ...
