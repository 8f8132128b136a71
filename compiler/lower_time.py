"""Lower stage, machines over time: stages, step loops, attention, state and lengths.

A machine over time runs in the stages ``check`` found (:class:`ir.Stage`):
on every step at once, with time folded into the batch (``[batch * steps,
*shape]``, so every op works as in a feed-forward machine, and attention runs
over the time axis), or step by step in a loop, forward or backward in time,
on ``[batch, *shape]`` tensors: a function of one step that ``runtime.recur``
runs (a Python loop in eager mode, PyTorch's ``scan`` when traced). Inputs are
cut into steps once and per-step values stacked once, never sliced out of a
growing tensor, so autograd stays linear in the number of steps. The methods
(``forward``, ``resolvent``, ``f``) are written in :mod:`.lower_time_methods`.
"""

from __future__ import annotations

import collections

from .ir import Port, StageKind, WindowKind
from .lower import _MachineLowering, _sanitize_key
from .lower_cells import CellLowering
from .lower_statements import _Plan
from .lower_time_methods import TimeMethods
from .names import METHOD_LOCALS, TIME_LOCALS, Namespace
from .ops import OPS, py_literal
from .source_text import dict_lines, py_str, py_tuple

_STAGE_WORDS = {
    StageKind.ALL: "every step at once",
    StageKind.FORWARD: "step by step, forward in time",
    StageKind.BACKWARD: "step by step, backward in time",
}


def _unpack(names: list[str]) -> str:
    """The target of a tuple assignment: ``(a,)`` or ``a, b``."""
    return f"({names[0]},)" if len(names) == 1 else ", ".join(names)


class TimeLowering(TimeMethods, CellLowering, _MachineLowering):
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
        # NOTE: scale. Looked up, not searched: each search was linear (in spaces, stages)
        self.space_index = {space.name: i for i, space in enumerate(self.machine.spaces)}
        self.loops = [s for s in self.stages if s.kind is not StageKind.ALL]  # step loops
        self.loop_number = {id(s): k for k, s in enumerate(self.loops, 1)}
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
        # space -> the variable holding its last step, where a cell's kernel gives only that
        self.last_state: dict[str, str] = {}

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
        lines = dict_lines("DELAYS: dict[str, int] = ", items, indent=4)
        if self.keeps:
            items = [f"{py_str(s)}: {k!r}" for s, k in self.keeps.items()]
            lines += dict_lines("WINDOWS: dict[str, int | None] = ", items, indent=4)
        if self.ids:
            items = [f"{py_str(s)}: {n}" for s, n in self.ids.items()]
            lines += dict_lines("IDS: dict[str, int] = ", items, indent=4)
        if self.stateful:
            names = py_tuple(py_str(e) for e in self.stateful)
            lines.append(f"STATEFUL_EDGES: tuple[str, ...] = {names}")
        lines.append(f"CAUSAL: bool = {self.causal}")
        return lines

    def _method_locals(self) -> Namespace:
        return Namespace(self.module_level | METHOD_LOCALS | TIME_LOCALS)

    # --- stages ---

    def _space_index(self, space: str) -> int:
        return self.space_index[space]

    def _run_stages(
        self,
        names: Namespace,
        start: dict[str, str],
        pasts: dict[str, str],
        wanted: set[str],
        lines: list[str],
    ) -> dict[str, str]:
        """Statements computing every space from folded starting values ``start``; returns
        the variables holding each space's folded sequence."""
        values = dict(start)
        last = {}  # space -> the last stage that reads or writes it
        for index, stage in enumerate(self.stages):
            for name in stage.edges:
                edge = self.edges[name]
                last.update((port.space, index) for port in (*edge.inputs, *edge.outputs))
        in_cells = self._cell_edges()
        for index, stage in enumerate(self.stages):
            if stage.kind is StageKind.ALL:
                edges = [e for e in stage.edges if e not in in_cells]
                if not edges:
                    continue
                plan = self._folded_plan(names, values, pasts)
                lines.append(f"# {_STAGE_WORDS[stage.kind]}")
                lines += self._statements(plan, edges)
                values.update(plan.var.maps[0])  # what the stage added
                continue
            cell = self._cell_of(index)
            if cell is not None:  # rewrite cells: PyTorch's fused kernel
                self._cell_stage(names, cell, values, pasts, lines)
                continue
            # NOTE: scale. Of the spaces the loop writes (all that _loop keeps of these),
            # those wanted or read later: not the union of those sets, nor made again from
            # the later stages for every loop, which was quadratic in the number of stages
            written = {p.space for name in stage.edges for p in self.edges[name].outputs}
            needed = {space for space in written if space in wanted or last[space] > index}
            self._loop(names, stage, values, pasts, needed, lines)
        return values

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
            # NOTE: scale. values as they are before the stage, not a copy of them: that
            # was quadratic in the number of stages
            var=collections.ChainMap({}, values),
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
    ) -> None:
        """One step loop: a function of one step that ``runtime.recur`` runs at every step
        (a Python loop in eager mode, one ``scan`` when compiled or exported); or, where a
        sub-machine's state goes from step to step, a Python ``for`` loop."""
        forward = stage.kind is StageKind.FORWARD
        loop_spaces = {p.space for e in stage.edges for p in self.edges[e].outputs}
        self._loop_spaces = loop_spaces
        # sub-machines whose state goes from step to step: a Python loop
        self._loop_stateful = [e for e in stage.edges if e in self.state_vars]
        plain = bool(self._loop_stateful)
        time = names.name("/time", self.machine.time)
        prep: list[str] = []
        per_step: dict[str, str] = {}  # key -> the variable holding its value at a step
        xs: list[tuple[str, str]] = []  # (folded sequence, its per-step variable), for recur

        def step_input(key: str, folded: str, hint: str) -> str:
            """A folded sequence computed before the loop, read at the loop's step."""
            if key not in per_step:
                if plain:
                    at = names.name(f"{key}/at", f"{hint}_at")
                    prep.append(f"{at} = runtime.unfold_steps({folded}, batch, steps)")
                    per_step[key] = f"{at}[{time}]"
                else:
                    per_step[key] = names.name(f"{key}/t", f"{hint}_t")
                    xs.append((folded, per_step[key]))
            return per_step[key]

        def unfold(space: str, delay: int) -> str:
            key = f"{space}/{delay}/steps"
            if key in per_step:
                return per_step[key]
            label = "" if not delay else f"_tm{delay}" if delay > 0 else f"_tp{-delay}"
            folded = values[space]
            if delay:
                port = Port(space=space, delay=delay, span=self.machine.span)
                folded = names.name(f"{space}/{delay}/seq", f"{space}{label}")
                prep.append(f"{folded} = {self._delayed(pasts, port, values[space])}")
            return step_input(key, folded, f"{space}{label}")

        self._step_input = step_input
        # read at another step by this loop: carried from step to step, as far as read
        # (NOTE: scale. One pass over the reads: a scan per space was quadratic.)
        reach: dict[str, int] = {}
        for e in stage.edges:
            for p in self.edges[e].inputs:
                if p.delay and p.space in loop_spaces:
                    reach[p.space] = max(reach.get(p.space, 0), abs(p.delay))
        read_across = set(reach)
        kept = needed & loop_spaces
        if forward and self.method == "forward" and self.causal:
            kept |= {s for s in loop_spaces if s in self.delays}  # for the state at the end
        carried = sorted(read_across, key=self._space_index)
        kept_order = sorted(kept, key=self._space_index)
        sign = "m" if forward else "p"
        carry = {  # space -> its values k, ..., 1 steps before (after) the current one
            space: [
                names.name(f"{space}/carry/{k}", f"{space}_t{sign}{k}")
                for k in range(reach[space], 0, -1)
            ]
            for space in carried
        }

        def read(port: Port) -> str:
            if port.space not in loop_spaces:
                return unfold(port.space, port.delay)
            if port.delay:
                return carry[port.space][-abs(port.delay)]
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
        body = self._statements(loop, list(stage.edges))
        masked = not forward and self.method == "forward"
        if masked and read_across:
            valid = names.name("/valid", "valid")
            prep.append(f"{valid} = runtime.valid_steps(lengths, batch, steps)")
            valid_t = step_input("/valid", valid, valid)
            for space in carried:
                value = loop.var[space]
                body.append(f"{value} = runtime.keep_valid({value}, {valid_t})")
        init = []
        for space in carried:
            if forward and space in self.delays:
                init += [f"{pasts[space]}[-{k}]" for k in range(reach[space], 0, -1)]
            else:
                init += [self._zero(space)] * reach[space]
        lines.append(f"# {_STAGE_WORDS[stage.kind]}")
        lines += prep
        now = {space: loop.var[space] for space in loop_spaces}
        outs = {space: names.name(space) for space in kept_order}
        frame = (forward, carried, carry, init, now, kept_order, outs, body)
        if plain:
            self._plain_loop(names, *frame, lines)
        else:
            self._recur(names, stage, *frame, xs, lines)
        values.update(outs)

    def _recur(
        self, names, stage, forward, carried, carry, init, now, kept, outs, body, xs, lines
    ) -> None:
        """``def step(carry, inputs): ...`` and the ``runtime.recur`` call that runs it."""
        hint = "step" if len(self.loops) == 1 else f"step_{self.loop_number[id(stage)]}"
        step = names.name(f"/step/{stage.edges[0]}", hint)
        carry_arg = names.name("/carry", "carry")
        inputs_arg = names.name("/inputs", "inputs")
        head = ["", f"def {step}({carry_arg}, {inputs_arg}):"]
        carry_vars = [var for space in carried for var in carry[space]]
        t = self.machine.time
        sign = "-" if forward else "+"
        reads = [f"{s}[{t}{sign}{k}]" for s in carried for k in range(len(carry[s]), 0, -1)]
        head.append(f"    {_unpack(carry_vars)} = {carry_arg}  # {', '.join(reads)}")
        if xs:
            head.append(f"    {_unpack([v for _, v in xs])} = {inputs_arg}")
        new_carry = [var for space in carried for var in carry[space][1:] + [now[space]]]
        ys = [now[space] for space in kept]
        tail = [f"    return {py_tuple(new_carry)}, {py_tuple(ys)}"]
        lines += head + ["    " + line for line in body] + tail + [""]
        args = [step, py_tuple(init), py_tuple(v for v, _ in xs), "batch", "steps"]
        if not forward:
            args.append("reverse=True")
        results = py_tuple(outs[space] for space in kept)
        lines.append(f"_, {results} = runtime.recur({', '.join(args)})")

    def _plain_loop(
        self, names, forward, carried, carry, init, now, kept, outs, body, lines
    ) -> None:
        """A Python ``for`` loop (a sub-machine's state goes from step to step): the values
        of each step in lists, stacked after the loop."""
        time = names.name("/time", self.machine.time)
        stateful = ", ".join(self._loop_stateful)
        lines.append(
            f"# a Python loop: the state of {stateful} goes from step to step "
            "(torch.compile unrolls it)"
        )
        lists = {}
        k = 0
        for space in sorted(set(carried) | set(kept), key=self._space_index):
            lists[space] = names.name(f"{space}/list", f"{space}_steps")
            depth = len(carry.get(space, ()))
            lines.append(f"{lists[space]} = [{', '.join(init[k : k + depth])}]")
            k += depth
        for space in carried:  # a delayed read is the list's item k steps back
            for j, var in enumerate(reversed(carry[space]), 1):
                body.insert(0, f"{var} = {lists[space]}[-{j}]")
        body += [f"{lists[space]}.append({now[space]})" for space in lists]
        steps_range = "range(steps)" if forward else "range(steps - 1, -1, -1)"
        lines.append(f"for {time} in {steps_range}:")
        lines += ["    " + line for line in body]
        for space in kept:
            depth = len(carry.get(space, ()))
            computed = f"{lists[space]}[{depth}:]" if depth else lists[space]
            if not forward:
                computed += "[::-1]"
            lines.append(f"{outs[space]} = torch.stack({computed}, 1).flatten(0, 1)")

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
                # a copy: a loop body traced as scan may not close over two views of one
                # tensor (torch refuses inputs that alias)
                weights.append(f"{weight} = {columns}.clone()")
                terms.append(f"F.linear({x}, {weight})")
        known = [edge.inputs[i].space for is_known, run in runs if is_known for i in run]
        label = _sanitize_key(known[0])
        projected = names.name(f"{edge.name}/in", f"{edge.name}_{label}")
        if bias:
            known_terms[0] = known_terms[0][:-1] + f", {bias})"
        where = self.where(edge.span)
        plan.prep.append(f"# {where}  {edge.name}: its linear on {', '.join(known)}, every step")
        plan.prep.append(f"{projected} = {' + '.join(known_terms)}")
        plan.prep.extend(weights)
        now = self._step_input(f"{edge.name}/in", projected, projected)
        expr = " + ".join([now, *terms])
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
