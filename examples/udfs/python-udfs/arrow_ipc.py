"""Arrow IPC stream bytes <-> Python columns, for the Ignis UDF boundary.

pyarrow does not run inside WebAssembly, so this is the small part of the
Arrow IPC format a UDF needs: one schema message and one record batch of
flat columns (booleans, integers, floats, strings, binary), nulls included,
no compression. Flatbuffer tables are read and written with the
`flatbuffers` package; the layouts follow format/Schema.fbs and
format/Message.fbs of Apache Arrow.
"""

import struct

import flatbuffers
from flatbuffers import number_types as N
from flatbuffers.table import Table

# Type union tags (Schema.fbs) and message header tags (Message.fbs).
INT, FLOAT, BINARY, UTF8, BOOL = 2, 3, 4, 5, 6
SCHEMA, RECORD_BATCH = 1, 3
METADATA_V5 = 4
CONTINUATION = 0xFFFFFFFF

# (tag, bit width, signed or float precision) -> struct format of one value.
_INT_FORMATS = {(8, True): "b", (16, True): "h", (32, True): "i", (64, True): "q",
                (8, False): "B", (16, False): "H", (32, False): "I", (64, False): "Q"}
_FLOAT_FORMATS = {1: "f", 2: "d"}


class Field:
    """A column's name and Arrow type: ("int", bits, signed), ("float", precision), ("utf8",), ("binary",), ("bool",)."""

    def __init__(self, name, kind, nullable=True):
        self.name, self.kind, self.nullable = name, kind, nullable

    def __repr__(self):
        return f"Field({self.name!r}, {self.kind!r})"


INT64, FLOAT64, STRING = ("int", 64, True), ("float", 2), ("utf8",)


class UnsupportedType(ValueError):
    pass


def _slot(table, slot):
    """The absolute position of field `slot` of a table, or 0 when absent."""
    o = table.Offset(4 + 2 * slot)
    return o + table.Pos if o else 0


def _scalar(table, slot, flags, default=0):
    pos = _slot(table, slot)
    return table.Get(flags, pos) if pos else default


def _child(table, slot):
    pos = _slot(table, slot)
    return Table(table.Bytes, table.Indirect(pos)) if pos else None


def _vector(table, slot):
    """(start, length) of a vector field."""
    o = table.Offset(4 + 2 * slot)
    return (table.Vector(o), table.VectorLen(o)) if o else (0, 0)


def _read_field(t):
    name = t.String(_slot(t, 0)).decode() if _slot(t, 0) else ""
    nullable = bool(_scalar(t, 1, N.BoolFlags))
    tag = _scalar(t, 2, N.Uint8Flags)
    type_table = _child(t, 3)
    if tag == INT:
        kind = ("int", _scalar(type_table, 0, N.Int32Flags), bool(_scalar(type_table, 1, N.BoolFlags)))
    elif tag == FLOAT:
        kind = ("float", _scalar(type_table, 0, N.Int16Flags))
    elif tag in (UTF8, BINARY, BOOL):
        kind = ({UTF8: "utf8", BINARY: "binary", BOOL: "bool"}[tag],)
    else:
        raise UnsupportedType(f"column '{name}': Arrow type #{tag} is not supported by this Python UDF codec")
    return Field(name, kind, nullable)


def _messages(data):
    """(header tag, header table, body) of each message of an IPC stream."""
    pos = 0
    while pos + 8 <= len(data):
        marker, size = struct.unpack_from("<Ii", data, pos)
        if marker != CONTINUATION:
            raise ValueError("not an Arrow IPC stream (no continuation marker)")
        if size == 0:
            return
        meta = data[pos + 8:pos + 8 + size]
        message = Table(meta, flatbuffers.encode.Get(flatbuffers.packer.uoffset, meta, 0))
        body_length = _scalar(message, 3, N.Int64Flags)
        body_start = pos + 8 + size
        yield _scalar(message, 1, N.Uint8Flags), _child(message, 2), data[body_start:body_start + body_length]
        pos = body_start + body_length


def _column(field, length, null_count, buffers, body):
    def buf(i):
        offset, size = buffers[i]
        return body[offset:offset + size]

    valid = buf(0)
    is_valid = (lambda i: True) if null_count == 0 or not valid else (lambda i: (valid[i >> 3] >> (i & 7)) & 1)
    kind = field.kind
    if kind[0] in ("utf8", "binary"):
        offsets = struct.unpack_from(f"<{length + 1}i", buf(1)) if length else (0,)
        data = buf(2)
        decode = (lambda b: b.decode()) if kind[0] == "utf8" else bytes
        values = [decode(data[offsets[i]:offsets[i + 1]]) for i in range(length)]
    elif kind[0] == "bool":
        bits = buf(1)
        values = [bool((bits[i >> 3] >> (i & 7)) & 1) for i in range(length)]
    elif kind[0] == "int":
        values = list(struct.unpack_from(f"<{length}{_INT_FORMATS[(kind[1], kind[2])]}", buf(1)))
    else:
        values = list(struct.unpack_from(f"<{length}{_FLOAT_FORMATS[kind[1]]}", buf(1)))
    return [v if is_valid(i) else None for i, v in enumerate(values)]


def read(data):
    """The fields and columns (lists, None for null) of the first batch of an IPC stream."""
    fields, columns = None, None
    for tag, header, body in _messages(bytes(data)):
        if tag == SCHEMA:
            start, count = _vector(header, 1)
            fields = [_read_field(Table(header.Bytes, header.Indirect(start + 4 * i))) for i in range(count)]
        elif tag == RECORD_BATCH and fields is not None:
            length = _scalar(header, 0, N.Int64Flags)
            if _slot(header, 3):
                raise UnsupportedType("compressed IPC buffers are not supported")
            nodes_start, _ = _vector(header, 1)
            buffers_start, buffer_count = _vector(header, 2)
            buffers = [struct.unpack_from("<qq", header.Bytes, buffers_start + 16 * i) for i in range(buffer_count)]
            columns = []
            for i, field in enumerate(fields):
                _, null_count = struct.unpack_from("<qq", header.Bytes, nodes_start + 16 * i)
                per_column = 3 if field.kind[0] in ("utf8", "binary") else 2
                columns.append(_column(field, length, null_count, buffers[per_column * i:per_column * (i + 1)], body))
            return fields, columns
    if fields is None:
        raise ValueError("the IPC stream has no schema")
    return fields, [[] for _ in fields]


def _pad(b):
    return b + bytes(-len(b) % 8)


def _column_buffers(field, values):
    """The validity and data buffers of one column, and its null count."""
    n = len(values)
    validity = bytearray((n + 7) // 8)
    for i, v in enumerate(values):
        if v is not None:
            validity[i >> 3] |= 1 << (i & 7)
    nulls = sum(v is None for v in values)
    kind = field.kind
    if kind[0] in ("utf8", "binary"):
        encoded = [b"" if v is None else (v.encode() if kind[0] == "utf8" else bytes(v)) for v in values]
        offsets = [0]
        for e in encoded:
            offsets.append(offsets[-1] + len(e))
        data = [struct.pack(f"<{n + 1}i", *offsets), b"".join(encoded)]
    elif kind[0] == "bool":
        bits = bytearray((n + 7) // 8)
        for i, v in enumerate(values):
            if v:
                bits[i >> 3] |= 1 << (i & 7)
        data = [bytes(bits)]
    elif kind[0] == "int":
        data = [struct.pack(f"<{n}{_INT_FORMATS[(kind[1], kind[2])]}", *[0 if v is None else v for v in values])]
    else:
        data = [struct.pack(f"<{n}{_FLOAT_FORMATS[kind[1]]}", *[0.0 if v is None else v for v in values])]
    return [bytes(validity) if nulls else b""] + data, nulls


def _message(header_tag, build_header, body_length):
    b = flatbuffers.Builder(1024)
    header = build_header(b)
    b.StartObject(5)
    b.PrependInt16Slot(0, METADATA_V5, 0)
    b.PrependUint8Slot(1, header_tag, 0)
    b.PrependUOffsetTRelativeSlot(2, header, 0)
    b.PrependInt64Slot(3, body_length, 0)
    b.Finish(b.EndObject())
    meta = _pad(bytes(b.Output()))
    return struct.pack("<Ii", CONTINUATION, len(meta)) + meta


def _schema(fields):
    def build(b):
        offsets = []
        for f in fields:
            name = b.CreateString(f.name)
            tag = {"int": INT, "float": FLOAT, "utf8": UTF8, "binary": BINARY, "bool": BOOL}[f.kind[0]]
            if f.kind[0] == "int":
                b.StartObject(2)
                b.PrependInt32Slot(0, f.kind[1], 0)
                b.PrependBoolSlot(1, f.kind[2], False)
            elif f.kind[0] == "float":
                b.StartObject(1)
                b.PrependInt16Slot(0, f.kind[1], 0)
            else:
                b.StartObject(0)
            type_table = b.EndObject()
            b.StartVector(4, 0, 4)
            children = b.EndVector()
            b.StartObject(7)
            b.PrependUOffsetTRelativeSlot(0, name, 0)
            b.PrependBoolSlot(1, f.nullable, False)
            b.PrependUint8Slot(2, tag, 0)
            b.PrependUOffsetTRelativeSlot(3, type_table, 0)
            b.PrependUOffsetTRelativeSlot(5, children, 0)
            offsets.append(b.EndObject())
        b.StartVector(4, len(offsets), 4)
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        vector = b.EndVector()
        b.StartObject(4)
        b.PrependUOffsetTRelativeSlot(1, vector, 0)
        return b.EndObject()

    return _message(SCHEMA, build, 0)


def _structs(b, pairs):
    b.StartVector(16, len(pairs), 8)
    for first, second in reversed(pairs):
        b.Prep(8, 16)
        b.PrependInt64(second)
        b.PrependInt64(first)
    return b.EndVector()


def write(fields, columns):
    """An IPC stream of these fields and one batch of these columns (lists, None for null)."""
    length = len(columns[0]) if columns else 0
    nodes, buffers, body = [], [], bytearray()
    for field, values in zip(fields, columns):
        if len(values) != length:
            raise ValueError(f"column '{field.name}' has {len(values)} values, not {length}")
        parts, nulls = _column_buffers(field, values)
        nodes.append((length, nulls))
        for part in parts:
            buffers.append((len(body), len(part)))
            body += _pad(part)

    def build(b):
        node_vector = _structs(b, nodes)
        buffer_vector = _structs(b, buffers)
        b.StartObject(5)
        b.PrependInt64Slot(0, length, 0)
        b.PrependUOffsetTRelativeSlot(1, node_vector, 0)
        b.PrependUOffsetTRelativeSlot(2, buffer_vector, 0)
        return b.EndObject()

    batch = _message(RECORD_BATCH, build, len(body)) + bytes(body)
    return _schema(fields) + batch + struct.pack("<Ii", CONTINUATION, 0)
