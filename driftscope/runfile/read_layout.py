"""The model layout of a :class:`driftscope.runfile.reader.Run`: parameters and layers in model order
(:class:`~driftscope.models.layout.ModelLayout`, head or body), and lookups by name.

A mixin so that ``reader.py`` stays readable; every read goes through the Run's checked
``_read``. Torch-free.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftscope.errors import RunFileError
from driftscope.models.layout import LayerInfo, ModelLayout, ParamInfo
from driftscope.runfile import schema
from driftscope.runfile.h5open import one_line as _one_line
from driftscope.runfile.h5open import strings as _strings
from driftscope.runfile.read_records import _guarded


class LayoutMixin:
    """The model layout of a run (mixed into :class:`~driftscope.runfile.reader.Run`)."""

    if TYPE_CHECKING:
        path: Path
        config: Any

        def _read(self, name: str, sel: Any = ()) -> Any: ...

    # ------------------------------------------------------------------ layout
    @cached_property
    @_guarded
    def layout(self) -> ModelLayout:
        """Parameters and layers in model order (:class:`~driftscope.models.layout.ModelLayout`)."""
        f = schema.param_field
        names = _strings(self._read(f("name")))
        layers_of = _strings(self._read(f("layer")))
        groups = _strings(self._read(f("group")))
        try:
            shapes = [
                tuple(int(v) for v in json.loads(s)) for s in _strings(self._read(f("shape")))
            ]
        except (TypeError, ValueError):
            raise RunFileError(f"{self.path.name}: {f('shape')} is damaged") from None
        offsets = self._read(f("offset"))
        lf = schema.layer_field
        lnames = _strings(self._read(lf("name")))
        columns = [
            lnames,
            _strings(self._read(lf("label"))),
            _strings(self._read(lf("kind"))),
            _strings(self._read(lf("group"))),
            self._read(lf("numel")),
        ]
        try:
            params = tuple(
                ParamInfo(n, ly, g, s, int(o))
                for n, ly, g, s, o in zip(names, layers_of, groups, shapes, offsets, strict=True)
            )
            layers = tuple(
                LayerInfo(
                    name,
                    label,
                    kind,
                    group,
                    tuple(p.name for p in params if p.layer == name),
                    int(numel),
                )
                for name, label, kind, group, numel in zip(*columns, strict=True)
            )
        except (TypeError, ValueError) as err:
            raise RunFileError(
                f"{self.path.name}: {schema.MODEL} is damaged ({_one_line(err)})"
            ) from None
        return ModelLayout(params, layers)

    @property
    def params(self) -> tuple[ParamInfo, ...]:
        return self.layout.params

    @property
    def layers(self) -> tuple[LayerInfo, ...]:
        return self.layout.layers

    @property
    def head_share(self) -> float:
        return self.layout.head_share

    @property
    def numel(self) -> int:
        """Parameters of the model."""
        return self.layout.numel

    def layer(self, name: str) -> LayerInfo:
        """A layer by module name (``classifier.4``) or label (``fc3``)."""
        try:
            return self.layout.layer(name)
        except KeyError:
            raise RunFileError(
                f"no layer '{name}' in {self.path.name}; layers are "
                + ", ".join(f"{ly.label} ({ly.name})" for ly in self.layers)
            ) from None

    def param(self, name: str) -> ParamInfo:
        try:
            return self.layout.param(name)
        except KeyError:
            raise RunFileError(
                f"no parameter '{name}' in {self.path.name}; parameters are "
                + ", ".join(p.name for p in self.params[:8])
                + (", ..." if len(self.params) > 8 else "")
            ) from None
