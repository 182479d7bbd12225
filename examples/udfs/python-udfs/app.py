"""An Ignis UDF component written in Python (built with componentize-py).

It implements the same `ignis:udf` world (wit/udf.wit) as components built
with the Rust SDK: `describe` lists the functions, `scalar.call` gets the
argument columns as an Arrow IPC stream and returns one column the same way.
"""

from componentize_py_types import Err

import arrow_ipc
import wit_world
from wit_world import exports
from wit_world.imports import types


def py_normalize(name):
    """Trims a product name, lower-cases it and turns each run of spaces, dashes and underscores into one dash."""
    out, pending_dash = [], False
    for c in name.strip():
        if c in " -_":
            pending_dash = bool(out)
        else:
            if pending_dash:
                out.append("-")
                pending_dash = False
            out.append(c.lower())
    return "".join(out)


# name -> (function, argument types, return type); a null argument gives a null result.
SCALARS = {
    "py_normalize": (py_normalize, [arrow_ipc.STRING], arrow_ipc.STRING),
}

_WIT_TYPES = {
    arrow_ipc.STRING: types.DataType_Utf8,
    arrow_ipc.INT64: types.DataType_Int64,
    arrow_ipc.FLOAT64: types.DataType_Float64,
}


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return [
            types.FunctionInfo(
                name=name,
                kind=types.FunctionKind_Scalar(
                    types.Signature(arguments=[_WIT_TYPES[t]() for t in arguments], returns=_WIT_TYPES[returns]())
                ),
                volatility=types.Volatility.IMMUTABLE,
                description=function.__doc__ or "",
            )
            for name, (function, arguments, returns) in SCALARS.items()
        ]


class Scalar(exports.Scalar):
    def call(self, name, args):
        if name not in SCALARS:
            raise Err(types.UdfError_UnknownFunction(f"this component has no scalar function named '{name}'"))
        function, arguments, returns = SCALARS[name]
        try:
            fields, columns = arrow_ipc.read(args)
        except ValueError as e:
            raise Err(types.UdfError_InvalidData(str(e)))
        if [f.kind for f in fields] != arguments:
            raise Err(types.UdfError_InvalidArguments(f"{name} takes {arguments}, got {[f.kind for f in fields]}"))
        rows = len(columns[0]) if columns else 0
        out = []
        for row in range(rows):
            values = [column[row] for column in columns]
            if any(v is None for v in values):
                out.append(None)
                continue
            try:
                out.append(function(*values))
            except Exception as e:
                raise Err(types.UdfError_Failed(f"{name} failed on row {row} of the batch: {e!r}"))
        return arrow_ipc.write([arrow_ipc.Field(name, returns)], [out])


class Transform(exports.Transform):
    def output_schema(self, name, input_schema):
        raise Err(types.UdfError_UnknownFunction(f"this component has no transform named '{name}'"))

    def call(self, name, batch):
        raise Err(types.UdfError_UnknownFunction(f"this component has no transform named '{name}'"))


class Aggregate(exports.Aggregate):
    pass
