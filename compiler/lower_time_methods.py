"""Lower stage, machines over time: the methods ``forward``, ``resolvent`` and ``f``.

A mixin of :class:`.lower_time.TimeLowering`: each method sets up what it starts
from (the inputs folded, the past from ``state``, the sub-machines' states), runs
the stages (``_run_stages``, written in :mod:`.lower_time`), then returns the
outputs and, for ``forward``, the state to resume from.
"""

from __future__ import annotations

import re

from .ir import StageKind
from .lower import Method
from .lower_statements import _Plan
from .names import Namespace
from .source_text import dict_lines, py_str, py_tuple


class TimeMethods:
    """``forward``, ``resolvent`` and ``f`` of a machine over time."""

    def _state_vars(self, names: Namespace, body: list[str], state: str | None) -> None:
        """A variable per stateful edge: its sub-machine's state, carried through the method
        (in ``resolvent``, only through loops: on every step at once a call starts afresh)."""
        self.state_vars = {}
        in_loops = {e for s in self.stages if s.kind is not StageKind.ALL for e in s.edges}
        for edge in self.stateful:
            if state is None and edge not in in_loops:
                continue
            var = self.state_vars[edge] = names.name(f"{edge}/state", f"{edge}_state")
            start = (
                "None"
                if state is None
                else f"None if {state} is None else {state}.get({py_str(edge)})"
            )
            body.append(f"{var} = {start}")

    def _pasts(self, names: Namespace, state: str, like: str) -> tuple[list[str], dict[str, str]]:
        """``space_past = runtime.past(...)`` for every space read at an earlier step, and
        ``space_seen = runtime.history(...)`` for every space a window reads."""
        lines, pasts = [], {}
        self.histories = {}
        if self.method == "forward" and self.causal:
            for space in self.windows:
                self.histories[space] = names.name(f"{space}/seen", f"{space}_seen")
                shape = tuple(self.machine.space(space).shape)
                lines.append(
                    f"{self.histories[space]} = runtime.history({state}, {py_str(space)}, "
                    f"{shape!r}, batch, {like})"
                )
        for space, k in self.delays.items():
            pasts[space] = names.name(f"{space}/past", f"{space}_past")
            shape = tuple(self.machine.space(space).shape)
            if space in self.histories:  # read through a window too: its history has its past
                lines.append(
                    f"{pasts[space]} = runtime.recent({self.histories[space]}, {k}, batch, {like})"
                )
                continue
            lines.append(
                f"{pasts[space]} = runtime.past({state}, {py_str(space)}, {shape!r}, {k}, "
                f"batch, {like})"
            )
        return lines, pasts

    def _forward(self, inputs, outputs) -> Method:
        self.method = "forward"
        self.last_state = {}
        names = self._method_locals()
        args = [names.name(s.name) for s in inputs]
        given = ", ".join(f"{py_str(s.name)}: {a}" for s, a in zip(inputs, args, strict=True))
        ids = ", self.IDS" if self.ids else ""
        body = [
            f"batch, steps, {py_tuple(args)} = "
            f"runtime.fold_inputs(self.SPACES, {{{given}}}, steps{ids})",
            "lengths = runtime.check_lengths(lengths, batch, steps)",
        ]
        self._like = self._float_like(inputs, args, names, body)
        time = self.machine.time
        if not self.causal:
            body.append(f"runtime.no_chunks({py_str(self.machine.name)}, state, return_state)")
        else:
            known = ["self.DELAYS", "state"]
            if self.stateful:
                known.append("stateful=self.STATEFUL_EDGES")
            if self.windows:
                known.append("windows=self.WINDOWS")
            if self.positions:
                known.append(f"clock={py_str(time)}")
            body.append(f"runtime.check_state({', '.join(known)})")
            if self.windows or self.positions:
                body.append("runtime.no_lengths_in_chunks(lengths, state, return_state)")
        if self.positions:
            body.append(f"offset = runtime.offset(state, {py_str(time)})")
        past_lines, pasts = self._pasts(names, "state", self._like)
        body += past_lines
        self._state_vars(names, body, "state")
        start = {s.name: a for s, a in zip(inputs, args, strict=True)}
        wanted = {s.name for s in outputs}
        values = self._run_stages(names, start, pasts, wanted, body)
        for s in outputs:
            var = values[s.name]
            body.append(f"{var} = runtime.mask_steps({var}, lengths, batch, steps)")
        unfold = lambda space: f"{values[space]}.unflatten(0, (batch, steps))"  # noqa: E731
        if self.output_tuple is None:
            returns, result = "Tensor", unfold(outputs[0].name)
        else:
            fields = ", ".join(
                f"{fld}={unfold(s.name)}"
                for fld, s in zip(self.output_tuple.fields, outputs, strict=True)
            )
            returns, result = self.output_tuple.name, f"{self.output_tuple.name}({fields})"
        if self.causal:
            items = []
            for space, k in self.delays.items():
                if space in self.keeps:
                    continue  # its history holds its past
                if space in self.last_state:  # a cell's kernel gave its last step alone
                    items.append(f"{py_str(space)}: {self.last_state[space]}")
                    continue
                items.append(
                    f"{py_str(space)}: runtime.last_steps({values[space]}, {k}, "
                    f"{pasts[space]}, batch, steps, lengths)"
                )
            for space, keep in self.keeps.items():
                items.append(
                    f"{py_str(space)}: runtime.extend_history({self.histories[space]}, "
                    f"{values[space]}, {keep!r}, batch, steps)"
                )
            if self.positions:
                items.append(f"{py_str(time)}: torch.tensor(offset + steps)")
            items += [f"{py_str(e)}: {self.state_vars[e]}" for e in self.stateful]
            body.append("if return_state:")
            body += ["    " + line for line in dict_lines(f"return {result}, ", items, indent=12)]
        body.append(f"return {result}")
        body = self._drop_unused_like(body)
        indent = "\n        "
        params = [
            "self",
            *(f"{a}: Tensor" for a in args),
            "*",
            "steps: int | None = None",
            "state: dict[str, Tensor] | None = None",
            "return_state: bool = False",
            "lengths: Tensor | None = None",
        ]
        returns = f"{returns} | tuple[{returns}, dict[str, Tensor]]"
        return Method(
            signature=f"forward({indent}{f',{indent}'.join(params)},\n    ) -> {returns}",
            doc="The machine over the inputs' steps; steps= runs on with zero input, "
            "state= resumes, lengths= masks padded steps.",
            body=tuple(body),
        )

    def _drop_unused_like(self, body: list[str]) -> list[str]:
        """Without the ``like = runtime.float_like(...)`` line if nothing uses it."""
        definition = f"{self._like} = runtime.float_like("
        pattern = re.compile(rf"\b{re.escape(self._like)}\b")
        if not any(line.startswith(definition) for line in body):
            return body
        if sum(1 for line in body if pattern.search(line)) > 1:
            return body
        return [line for line in body if not line.startswith(definition)]

    def _float_like(self, inputs, args, names: Namespace, body: list[str]) -> str:
        """A tensor whose dtype and device new tensors take: a non-ids input, if any."""
        for s, a in zip(inputs, args, strict=True):
            if s.ids is None:
                return a
        like = names.name("/like", "like")
        body.append(f"{like} = runtime.float_like(self, {args[0]})")
        return like

    def _resolvent(self) -> Method:
        self.method = "resolvent"
        names = self._method_locals()
        ids = ", self.IDS, self" if self.ids else ""
        body = [f"batch, steps, x0 = runtime.fold_state(self.SPACES, x0{ids})"]
        self._like = f"x0[{py_str(self._float_space())}]"
        past_lines, pasts = self._pasts(names, "None", self._like)
        body += past_lines
        self._state_vars(names, body, None)
        start = {s.name: f"x0[{py_str(s.name)}]" for s in self.machine.spaces}
        wanted = {s.name for s in self.machine.spaces}
        values = self._run_stages(names, start, pasts, wanted, body)
        items = [
            f"{py_str(s.name)}: {values[s.name]}.unflatten(0, (batch, steps))"
            for s in self.machine.spaces
        ]
        body += dict_lines("return ", items, indent=8)
        return Method(
            signature="resolvent(self, x0: dict[str, Tensor]) -> dict[str, Tensor]",
            doc="The solution x of x = f(x) + x0 over space-time: x0 gives [batch, time, *shape] "
            "tensors on any spaces (the rest are zero); before the first step and after the "
            "last, every space is zero.",
            body=tuple(body),
        )

    def _float_space(self) -> str:
        return next(s.name for s in self.machine.spaces if s.ids is None)

    def _f(self) -> Method:
        self.method = "f"
        names = self._method_locals()
        plan = _Plan(
            read=lambda port: (
                f"runtime.delayed(state[{py_str(port.space)}], {port.delay}, None, batch, steps)"
                if port.delay
                else f"state[{py_str(port.space)}]"
            ),
            base=lambda space: None,
            leveled=False,
            locals=names,
        )
        ids = ", self.IDS, self" if self.ids else ""
        body = [f"batch, steps, state = runtime.fold_state(self.SPACES, state{ids})"]
        self._like = f"state[{py_str(self._float_space())}]"
        self.state_vars = {}  # f maps whole sequences: sub-machines start from a zero past
        self.histories = {}
        body += self._statements(plan, [e.name for e in self.machine.edges])
        out = {}
        for space in self.machine.spaces:
            if not self.writers[space.name]:
                out[space.name] = f"torch.zeros_like(state[{py_str(space.name)}])"
            else:
                out[space.name] = plan.var[space.name]
        items = [
            f"{py_str(s.name)}: {out[s.name]}.unflatten(0, (batch, steps))"
            for s in self.machine.spaces
        ]
        body += dict_lines("return ", items, indent=8)
        return Method(
            signature="f(self, state: dict[str, Tensor]) -> dict[str, Tensor]",
            doc="The global endofunction over space-time: the sum of all edges applied to "
            "state ([batch, time, *shape] per space, missing: zero; before step 0 and after "
            "the last step: zero).",
            body=tuple(body),
        )
