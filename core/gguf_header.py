"""The metadata and tensor shapes of a GGUF file, read in milliseconds for the model library.

``gguf.GGUFReader`` builds a numpy view of every key, including the tokenizer's vocabulary and merges (hundreds of
thousands of strings): about 3 s for SmolLM2-135M on a busy laptop. The library lists dozens of GGUF files, and
needs only the scalar keys (architecture, context length, licence, file type, chat template) and the tensors'
element counts, so this reader walks the header once with ``struct`` over a memory map and *skips* long arrays
(their items are not decoded). It is checked against ``GGUFReader`` in the tests. Standard library only.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

GGUF_MAGIC = b"GGUF"
# value type -> struct format (None: string / array, handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAY_ITEMS = 16  # arrays up to this length are decoded (languages, tags); longer ones only counted
_MAX_COUNT = 1 << 40  # anything larger is a corrupt header, not a model


class GGUFHeaderError(ValueError):
    """Not a GGUF file, or a truncated/corrupt header."""


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # long arrays appear as {"array_of": type, "count": n}
    tensor_count: int
    parameters: int  # elements of every tensor
    tensor_types: dict[int, int] = field(default_factory=dict)  # ggml type -> elements of that type

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def arch_value(self, suffix: str) -> Any:
        """``{architecture}.{suffix}``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{suffix}") if self.architecture else None


class _Cursor:
    def __init__(self, buf: Any, endian: str) -> None:
        self.buf, self.pos, self.endian = buf, 0, endian
        self.size = len(buf)

    def unpack(self, fmt: str) -> Any:
        fmt = self.endian + fmt
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise GGUFHeaderError("truncated GGUF header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, keep: bool = True) -> str | None:
        length = self.unpack("Q")
        if length > self.size - self.pos:
            raise GGUFHeaderError("truncated GGUF header (string)")
        start = self.pos
        self.pos += length
        return bytes(self.buf[start:self.pos]).decode("utf-8", errors="replace") if keep else None

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.unpack("I"), self.unpack("Q")
            if count > _MAX_COUNT:
                raise GGUFHeaderError("corrupt GGUF header (array length)")
            if count <= _KEEP_ARRAY_ITEMS:
                return [self.value(itype) for _ in range(count)]
            self.skip_array(itype, count)
            return {"array_of": itype, "count": count}
        raise GGUFHeaderError(f"unknown GGUF value type {vtype}")

    def skip_array(self, itype: int, count: int) -> None:
        if itype in _SCALARS:
            n = struct.calcsize(_SCALARS[itype]) * count
            if self.pos + n > self.size:
                raise GGUFHeaderError("truncated GGUF header (array)")
            self.pos += n
        elif itype == _STRING:
            fmt, buf, pos, size = self.endian + "Q", self.buf, self.pos, self.size
            unpack = struct.Struct(fmt).unpack_from
            for _ in range(count):
                if pos + 8 > size:
                    raise GGUFHeaderError("truncated GGUF header (string array)")
                pos += 8 + unpack(buf, pos)[0]
            if pos > size:
                raise GGUFHeaderError("truncated GGUF header (string array)")
            self.pos = pos
        elif itype == _ARRAY:
            for _ in range(count):
                self.value(_ARRAY)
        else:
            raise GGUFHeaderError(f"unknown GGUF array item type {itype}")


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """The key/value metadata and tensor element counts of the GGUF file at ``path``."""
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GGUFHeaderError(f"{path}: empty file, not GGUF") from None
        try:
            return _parse(buf, str(path))
        finally:
            buf.close()


def _parse(buf: Any, where: str) -> GGUFHeader:
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFHeaderError(f"{where}: not a GGUF file")
    endian = "<"
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0:  # written big-endian
        endian = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version < 2:
        raise GGUFHeaderError(f"{where}: GGUF version {version} is too old")
    cur = _Cursor(buf, endian)
    cur.pos = 8
    tensor_count, kv_count = cur.unpack("Q"), cur.unpack("Q")
    if tensor_count > _MAX_COUNT or kv_count > _MAX_COUNT:
        raise GGUFHeaderError(f"{where}: corrupt GGUF header")
    metadata: dict[str, Any] = {}
    try:
        for _ in range(kv_count):
            key = cur.string()
            metadata[str(key)] = cur.value(cur.unpack("I"))
        params, types = 0, {}
        for _ in range(tensor_count):
            cur.string(keep=False)
            n_dims = cur.unpack("I")
            if n_dims > 8:
                raise GGUFHeaderError("corrupt GGUF header (tensor dimensions)")
            elements = 1
            for _d in range(n_dims):
                elements *= cur.unpack("Q")
            ggml_type = cur.unpack("I")
            cur.unpack("Q")  # data offset
            params += elements
            types[ggml_type] = types.get(ggml_type, 0) + elements
    except GGUFHeaderError as exc:
        raise GGUFHeaderError(f"{where}: {exc}") from None
    return GGUFHeader(version, metadata, tensor_count, params, types)


# general.file_type (llama.cpp's LLAMA_FTYPE) -> the name users know; from gguf.LlamaFileType
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4",
}  # fmt: skip
# ggml tensor type -> name, for files without general.file_type (the most common type by elements names the file)
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16", 39: "MXFP4",
}  # fmt: skip


def quantization_name(header: GGUFHeader) -> str | None:
    """``Q4_K_M``, ``F16``, ... from ``general.file_type``, else the tensor type holding most weights."""
    file_type = header.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
    if header.tensor_types:
        ggml_type = max(header.tensor_types, key=header.tensor_types.__getitem__)
        return TENSOR_TYPES.get(ggml_type)
    return None
