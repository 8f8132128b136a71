"""Lower stage, machines over time: stages, step loops, attention, state and lengths.

A machine over time runs in the stages ``check`` found (:class:`ir.Stage`):
on every step at once, with time folded into the batch (``[batch * steps,
*shape]``, so every op works as in a feed-forward machine, and attention runs
over the time axis), or step by step in a loop, forward or backward in time,
on ``[batch, *shape]`` tensors. Per-step values are kept in lists and stacked
once, never sliced out of a growing tensor, so autograd stays linear in the
number of steps.
"""

from __future__ import annotations

import re

from .ir import Port, StageKind, WindowKind
from .lower import (
    Method,
    _dict_lines,
    _MachineLowering,
    _Plan,
    _py_tuple,
    _sanitize_key,
    py_str,
)
from .names import METHOD_LOCALS, TIME_LOCALS, Namespace
from .ops import OPS, py_literal

_STAGE_WORDS = {
    StageKind.ALL: "every step at once",
    StageKind.FORWARD: "step by step, forward in time",
    StageKind.BACKWARD: "step by step, backward in time",
}


class TimeLowering(_MachineLowering):
    """A machine over time: tensors are ``[batch, time, *shape]``."""

    def __init__(self, *args):
        super().__init__(*args)
        structure = self.structure
        self.stages = structure.stages
        self.delays = structure.delays
        self.windows = structure.windows
        # how many steps the state keeps of a space a window reads (None: all), delays too
        self.keeps = {
            space: None if w is None else max(w, self.delays.get(space, 0))
            for space, w in self.windows.items()
        }
        self.causal = structure.causal
        self.stage_of = {e: i for i, stage in enumerate(self.stages) for e in stage.edges}
        # edges whose sub-machine is over time and causal: its state goes in and out of forward
        self.stateful = [
            e.name
            for e in self.machine.edges
            if e.machine and self.machines[e.machine].time and self._sub_causal(e.machine)
        ]
        self.state_vars: dict[str, str] = {}  # stateful edge -> its state variable, per method
        self.positions = any(p.position for e in self.machine.edges for p in e.inputs)
        self.ids = {s.name: s.ids for s in self.machine.spaces if s.ids is not None}
        self.method = "forward"  # the method being written: forward, resolvent or f

    def _sub_causal(self, key: str) -> bool:
        return self.structures[key].causal

    def _methods(self, inputs, outputs):
        from .lower_methods import tool_methods

        # no adjoint yet: a machine over time's is a machine over reversed time
        return (self._forward(inputs, outputs), self._f(), self._resolvent()) + tool_methods(
            self, inputs
        )

    def _doc_notes(self) -> list[str]:
        t = self.machine.time
        notes = ["Tensors are [batch, time, *shape]"]
        reads = [f"{s}[{t}-{k}]" for s, k in self.delays.items()]
        if reads:
            notes[0] += "; " + ", ".join(reads) + " are read from earlier steps"
        notes[0] += "."
        if self.ids:
            notes.append(
                "Ids are [batch, time] integer tensors: "
                + ", ".join(f"{s} in [0, {n})" for s, n in self.ids.items())
                + "."
            )
        if not self.causal:
            notes.append("It reads later steps, so it cannot run in chunks (no state=).")
        return notes

    def _class_attributes(self) -> list[str]:
        items = [f"{py_str(s)}: {k}" for s, k in self.delays.items()]
        lines = _dict_lines("DELAYS: dict[str, int] = ", items, indent=4)
        if self.keeps:
            items = [f"{py_str(s)}: {k!r}" for s, k in self.keeps.items()]
            lines += _dict_lines("WINDOWS: dict[str, int | None] = ", items, indent=4)
        if self.ids:
            items = [f"{py_str(s)}: {n}" for s, n in self.ids.items()]
            lines += _dict_lines("IDS: dict[str, int] = ", items, indent=4)
        if self.stateful:
            names = _py_tuple(py_str(e) for e in self.stateful)
            lines.append(f"STATEFUL_EDGES: tuple[str, ...] = {names}")
        lines.append(f"CAUSAL: bool = {self.causal}")
        return lines

    def _method_locals(self) -> Namespace:
        return Namespace(self.module_level | METHOD_LOCALS | TIME_LOCALS)

    # --- stages ---

    def _space_index(self, space: str) -> int:
        return next(i for i, s in enumerate(self.machine.spaces) if s.name == space)

    def _run_stages(
        self,
        names: Namespace,
        start: dict[str, str],
        pasts: dict[str, str],
        wanted: set[str],
        lines: list[str],
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Statements computing every space from folded starting values ``start``.

        Returns the variables holding each space's folded sequence, and the lists of
        per-step values of spaces computed in forward loops (for the state at the end).
        """
        values = dict(start)
        steps_of: dict[str, str] = {}
        for index, stage in enumerate(self.stages):
            if stage.kind is StageKind.ALL:
                plan = self._folded_plan(names, values, pasts)
                lines.append(f"# {_STAGE_WORDS[stage.kind]}")
                lines += self._statements(plan, list(stage.edges))
                values.update(plan.var)
                continue
            later = {e for s in self.stages[index + 1 :] for e in s.edges}
            touched_later = {
                port.space
                for name in later
                for port in (*self.edges[name].inputs, *self.edges[name].outputs)
            }
            lists = self._loop(names, stage, values, pasts, wanted | touched_later, lines)
            steps_of.update(lists)
        return values, steps_of

    def _delayed(self, pasts: dict[str, str], port: Port, var: str) -> str:
        """The folded sequence ``var`` read at ``port``'s other step."""
        past = pasts.get(port.space, "None") if port.delay > 0 else "None"
        lengths = ", lengths" if port.delay < 0 and self.method == "forward" else ""
        return f"runtime.delayed({var}, {port.delay}, {past}, batch, steps{lengths})"

    def _position_read(self, edge_name: str, port: Port) -> str:
        edge = self.edges[edge_name]
        count = edge.ops[0].args["num"]
        start = "offset" if self.method == "forward" else "0"
        like = self._like
        return (
            f"runtime.positions({start}, batch, steps, {count}, {py_str(edge.name)}, "
            f"{py_str(self.where(edge.span))}, {like})"
        )

    def _folded_plan(self, names: Namespace, values: dict[str, str], pasts) -> _Plan:
        """A plan on folded sequences: a read of another step shifts the sequence."""

        def read(port: Port) -> str:
            if port.delay:
                return self._delayed(pasts, port, plan.var[port.space])
            return plan.var[port.space]

        plan = _Plan(
            read=read,
            base=values.get,
            leveled=False,
            locals=names,
            var=dict(values),
        )
        return plan

    def _loop(
        self,
        names: Namespace,
        stage,
        values: dict[str, str],
        pasts: dict[str, str],
        needed: set[str],
        lines: list[str],
    ) -> dict[str, str]:
        """One step loop; returns the lists of per-step values of its spaces."""
        time = names.name("/time", self.machine.time)
        forward = stage.kind is StageKind.FORWARD
        members = set(stage.edges)
        loop_spaces = {p.space for e in stage.edges for p in self.edges[e].outputs}
        per_step: dict[tuple[str, int], str] = {}  # (space, delay) -> per-step values
        prep: list[str] = []
        steps_of: dict[str, str] = {}

        def unfold(port_space: str, delay: int) -> str:
            key = (port_space, delay)
            if key not in per_step:
                label = "" if not delay else f"_tm{delay}" if delay > 0 else f"_tp{-delay}"
                per_step[key] = names.name(f"{port_space}/{delay}/steps", f"{port_space}{label}_at")
                port = Port(space=port_space, delay=delay, span=self.machine.span)
                source = (
                    self._delayed(pasts, port, values[port_space]) if delay else values[port_space]
                )
                prep.append(f"{per_step[key]} = runtime.unfold_steps({source}, batch, steps)")
            return f"{per_step[key]}[{time}]"

        def read(port: Port) -> str:
            if port.space not in loop_spaces:
                return unfold(port.space, port.delay)
            if port.delay:
                return f"{steps_of[port.space]}[-{abs(port.delay)}]"
            return loop.var[port.space]

        loop = _Plan(
            read=read,
            base=lambda space: unfold(space, 0) if space in values else None,
            leveled=False,
            locals=names,
            prep=prep,
            folded=lambda port: (
                self._delayed(pasts, port, values[port.space]) if port.delay else values[port.space]
            ),
        )
        self._loop_spaces = loop_spaces
        read_across = {  # read at another step by this loop
            p.space for e in stage.edges for p in self.edges[e].inputs if p.delay
        } & loop_spaces
        kept = needed & loop_spaces  # stacked after the loop
        remembered = {s for s in loop_spaces if s in self.delays}  # for the state
        listed = sorted(kept | remembered | read_across, key=self._space_index)
        depth = {}  # steps before the first computed one at the start of each list
        for space in listed:
            steps_of[space] = names.name(f"{space}/list", f"{space}_steps")
            if forward and space in self.delays:
                start_list = f"list({pasts[space]})"
                depth[space] = self.delays[space]
            else:
                reach = max(
                    (
                        abs(p.delay)
                        for e in stage.edges
                        for p in self.edges[e].inputs
                        if p.space == space and p.delay
                    ),
                    default=0,
                )
                start_list = f"[{self._zero(space)}] * {reach}" if reach else "[]"
                depth[space] = reach
            prep.append(f"{steps_of[space]} = {start_list}")
        body = self._statements(loop, [e for e in stage.edges if e in members])
        for space in listed:
            value = loop.var[space]
            if not forward and space in read_across and self.method == "forward":
                body.append(f"{value} = runtime.mask_step({value}, lengths, {time})")
            body.append(f"{steps_of[space]}.append({value})")
        lines.append(f"# {_STAGE_WORDS[stage.kind]}")
        lines += prep
        steps_range = "range(steps)" if forward else "range(steps - 1, -1, -1)"
        lines.append(f"for {time} in {steps_range}:")
        lines += ["    " + line for line in body]
        for space in listed:
            if space not in kept:
                continue
            k = depth[space]
            computed = f"{steps_of[space]}[{k}:]" if k else steps_of[space]
            if not forward:
                computed += "[::-1]"
            values[space] = names.name(space)
            lines.append(f"{values[space]} = torch.stack({computed}, 1).flatten(0, 1)")
        # the lists of spaces not stacked, for the state (a stacked one has its final value)
        result = {space: steps_of[space] for space in listed if forward and space not in kept}
        return result

    def _zero(self, space: str) -> str:
        shape = ", ".join(map(str, self.machine.space(space).shape))
        return f"{self._like}.new_zeros((batch, {shape}))"

    # --- edges ---

    def _edge_expr(self, edge, plan: _Plan, lines: list[str]) -> str:
        """As for any machine, except: sub-machines over time carry their state; in a
        loop, a first ``linear`` whose inputs are partly known before the loop is split
        by columns of its weight, and the known part (an RNN's input projection) runs
        for every step at once before the loop."""
        if edge.machine is not None and self.machines[edge.machine].time is not None:
            return self._time_call(edge, plan, lines)
        if plan.prep is None or not self._splits(edge):
            return super()._edge_expr(edge, plan, lines)
        return self._split_linear(edge, plan, lines)

    def _product_expr(self, edge, plan: _Plan) -> str:
        first = OPS[edge.ops[0].kind]
        if first.windows:
            return self._attention(edge, plan)
        if edge.inputs[0].position:
            return self._position_read(edge.name, edge.inputs[0])
        return super()._product_expr(edge, plan)

    def _attention(self, edge, plan: _Plan) -> str:
        q, k, v = edge.inputs
        op = edge.ops[0]
        window = k.window
        if self.method == "f":  # f reads the given state, whatever edges compute from it
            keys, values = (f"state[{py_str(p.space)}]" for p in (k, v))
        else:
            keys, values = plan.var[k.space], plan.var[v.space]
        args = [plan.read(q), keys, values, py_literal(op.args["heads"])]
        args += ["batch", "steps"]
        if window.kind is not WindowKind.FULL:
            args.append("causal=True")
        if window.kind is WindowKind.SLIDING:
            args.append(f"size={window.size}")
        if self.method == "forward" and self.causal and k.space in self.windows:
            args.append(f"past=({self.histories[k.space]}, {self.histories[v.space]})")
        if self.method == "forward":
            args.append("lengths=lengths")
        if op.args.get("dropout"):
            args.append(f"dropout={py_literal(op.args['dropout'])}, training=self.training")
        return f"runtime.attention({', '.join(args)})"

    def _splits(self, edge) -> bool:
        """Whether a step edge starts with a vector linear on inputs partly known before it."""
        if not edge.ops:
            return False  # a machine used as an edge
        first = edge.ops[0]
        if first.kind != "linear" or len(self.structure.shapes[edge.name][0]) != 1:
            return False
        known = [port.space not in self._loop_spaces for port in edge.inputs]
        return any(known) and not all(known)

    def _split_linear(self, edge, plan: _Plan, lines: list[str]) -> str:
        names = plan.locals
        layer = self.layer_exprs[(edge.name, 0)]
        widths = [self.machine.space(port.space).shape[0] for port in edge.inputs]
        runs: list[tuple[bool, list[int]]] = []  # (known before the loop, input indices)
        for i, port in enumerate(edge.inputs):
            known = port.space not in self._loop_spaces
            if runs and runs[-1][0] == known:
                runs[-1][1].append(i)
            else:
                runs.append((known, [i]))
        bias = f"{layer}.bias" if edge.ops[0].args["bias"] else None
        time = names.name("/time", self.machine.time)
        terms: list[str] = []
        known_terms: list[str] = []
        weights: list[str] = []  # column slices of the weight for the per-step part
        for known, indices in runs:
            lo, hi = sum(widths[: indices[0]]), sum(widths[: indices[-1] + 1])
            columns = f"{layer}.weight[:, {lo or ''}:{hi if hi < sum(widths) else ''}]"
            ports = [edge.inputs[i] for i in indices]
            if known:
                source = [plan.folded(port) for port in ports]
                x = source[0] if len(source) == 1 else f"torch.cat([{', '.join(source)}], dim=1)"
                known_terms.append(f"F.linear({x}, {columns})")
            else:
                reads = [plan.read(port) for port in ports]
                x = reads[0] if len(reads) == 1 else f"torch.cat([{', '.join(reads)}], dim=1)"
                label = "_".join(_sanitize_key(port.space) for port in ports[:1])
                weight = names.name(f"{edge.name}/w/{indices[0]}", f"{edge.name}_w_{label}")
                weights.append(f"{weight} = {columns}")
                terms.append(f"F.linear({x}, {weight})")
        known = [edge.inputs[i].space for is_known, run in runs if is_known for i in run]
        label = _sanitize_key(known[0])
        projected = names.name(f"{edge.name}/in", f"{edge.name}_{label}")
        steps_of = names.name(f"{edge.name}/in/steps", f"{projected}_at")
        if bias:
            known_terms[0] = known_terms[0][:-1] + f", {bias})"
        where = self.where(edge.span)
        plan.prep.append(f"# {where}  {edge.name}: its linear on {', '.join(known)}, every step")
        plan.prep.append(f"{projected} = {' + '.join(known_terms)}")
        plan.prep.append(f"{steps_of} = runtime.unfold_steps({projected}, batch, steps)")
        plan.prep.extend(weights)
        expr = " + ".join([f"{steps_of}[{time}]", *terms])
        return self._apply_ops(edge, plan, lines, expr, 1)

    def _time_call(self, edge, plan: _Plan, lines: list[str]) -> str:
        """A sub-machine over time: on whole sequences outside loops, one step at a time
        (with its state) inside them."""
        layer = self.layer_exprs[(edge.name, 0)]
        reads = [plan.read(port) for port in edge.inputs]
        state = self.state_vars.get(edge.name)
        in_loop = plan.prep is not None
        if in_loop:
            args = [f"{r}[:, None]" for r in reads]
        else:
            args = [f"{r}.unflatten(0, (batch, steps))" for r in reads]
        if self.method == "forward" and not in_loop:
            args.append("lengths=lengths")
        call = f"{layer}({', '.join(args)}"
        if state is None or (not in_loop and self.method != "forward"):
            return f"runtime.folded({call}))"
        out = plan.locals.name(f"{edge.name}/out", f"{edge.name}_out")
        if in_loop:
            lines.append(f"{out}, {state} = {call}, state={state}, return_state=True)")
            return f"runtime.step_of({out})"
        lines.append(
            f"{out}, {state} = runtime.with_state({call}, state={state}, "
            "return_state=return_state), return_state)"
        )
        return f"runtime.folded({out})"

    # --- methods ---

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
        names = self._method_locals()
        args = [names.name(s.name) for s in inputs]
        given = ", ".join(f"{py_str(s.name)}: {a}" for s, a in zip(inputs, args, strict=True))
        ids = ", self.IDS" if self.ids else ""
        body = [
            f"batch, steps, {_py_tuple(args)} = "
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
        values, steps_of = self._run_stages(names, start, pasts, wanted, body)
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
                if space in steps_of:
                    items.append(
                        f"{py_str(space)}: runtime.end_steps({steps_of[space]}, {k}, steps, "
                        "lengths)"
                    )
                else:
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
            body += ["    " + line for line in _dict_lines(f"return {result}, ", items, indent=12)]
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
        values, _ = self._run_stages(names, start, pasts, wanted, body)
        items = [
            f"{py_str(s.name)}: {values[s.name]}.unflatten(0, (batch, steps))"
            for s in self.machine.spaces
        ]
        body += _dict_lines("return ", items, indent=8)
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
        body += _dict_lines("return ", items, indent=8)
        return Method(
            signature="f(self, state: dict[str, Tensor]) -> dict[str, Tensor]",
            doc="The global endofunction over space-time: the sum of all edges applied to "
            "state ([batch, time, *shape] per space, missing: zero; before step 0 and after "
            "the last step: zero).",
            body=tuple(body),
        )
