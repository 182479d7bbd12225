"""The `aggregate` interface's resource: this component offers no aggregates.

componentize-py looks up an exported resource in a module named after its
interface, hence this file.
"""

from componentize_py_types import Err

from wit_world.exports import aggregate
from wit_world.imports import types


def _none(name="?"):
    return Err(types.UdfError_UnknownFunction(f"this component has no aggregate named '{name}'"))


class Accumulator(aggregate.Accumulator):
    @classmethod
    def create(cls, name):
        raise _none(name)

    def update(self, args):
        raise _none()

    def state(self):
        raise _none()

    def merge(self, states):
        raise _none()

    def evaluate(self):
        raise _none()
