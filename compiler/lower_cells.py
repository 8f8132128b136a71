"""Lower stage, machines over time: a step loop that is one of PyTorch's cells.

A mixin of :class:`.lower_time.TimeLowering`. Where the rewrite ``cells``
(:mod:`.cells`) recorded a step loop as an :class:`ir.Cell`, ``forward`` calls
``runtime.cell`` (PyTorch's fused kernel) instead of the loop, with the kernel's
weights assembled from the edges' linears in PyTorch's gate order; the generated
code says so in a comment. ``f`` and ``resolvent`` keep the loop.
"""

from __future__ import annotations

from .ir import Cell, CellKind
from .names import Namespace
from .source_text import py_str

_TORCH = {
    CellKind.RNN_TANH: ("torch.nn.RNN", "torch.rnn_tanh", "rnn"),
    CellKind.RNN_RELU: ("torch.nn.RNN(nonlinearity='relu')", "torch.rnn_relu", "rnn"),
    CellKind.LSTM: ("torch.nn.LSTM", "torch.lstm", "lstm"),
    CellKind.GRU: ("torch.nn.GRU", "torch.gru", "gru"),
}
_GATES = {CellKind.LSTM: "i, f, g, o", CellKind.GRU: "r, z, n"}


def _cut(lo: int, hi: int, size: int) -> str:
    """A slice ``lo:hi`` of ``0:size`` as Python writes it: ``:8``, ``8:``, ``:``."""
    return f"{lo or ''}:{hi if hi < size else ''}"


class CellLowering:
    """The kernel call of a step loop recorded as a cell."""

    def _cell_of(self, index: int) -> Cell | None:
        """The cell that runs stage ``index`` in this method, if any (``forward`` only)."""
        if self.method != "forward":
            return None
        return next((c for c in self.structure.cells if c.stage == index), None)

    def _cell_edges(self) -> set[str]:
        """Edges that a cell's kernel computes in this method (not written out apart)."""
        if self.method != "forward":
            return set()
        return {e for c in self.structure.cells for e in c.edges}

    def _cell_stage(
        self,
        names: Namespace,
        cell: Cell,
        values: dict[str, str],
        pasts: dict[str, str],
        lines: list[str],
    ) -> None:
        module, kernel, label = _TORCH[cell.kind]
        edges = [self.edges[e] for e in cell.edges]
        linears = list(dict.fromkeys(b.edge for b in (*cell.ih, *cell.hh)))
        direction = "backward" if cell.reverse else "forward"
        lines.append(f"# step by step, {direction} in time: one call of PyTorch's fused kernel")
        where = self.where(edges[0].span)
        gates = ""
        if cell.kind in _GATES:
            gates = f" (gates {_GATES[cell.kind]}: {', '.join(cell.gates)})"
        sources = (
            ", ".join(linears[:-1]) + " and " + linears[-1] if len(linears) > 1 else linears[0]
        )
        lines += [
            f"# {where}  machc: this step loop ({', '.join(cell.edges)}) is exactly {module}'s "
            f"cell{gates}:",
            f"# forward calls {kernel} (fused kernel) with weights assembled from {sources}.",
            "# machc compile --no-cells keeps the step loop.",
        ]
        weights = self._cell_weights(names, cell, label, lines)
        inputs = [values[space] for space in cell.inputs]
        x = inputs[0] if len(inputs) == 1 else f"torch.cat([{', '.join(inputs)}], dim=1)"
        states = [cell.hidden] + ([cell.memory] if cell.memory else [])
        forward = not cell.reverse
        hx = [
            f"{pasts[s]}[-1]" if forward and s in self.delays and s in pasts else "None"
            for s in states
        ]
        args = [
            py_str(cell.kind.value),
            x,
            f"({', '.join(hx)},)" if len(hx) == 1 else f"({', '.join(hx)})",
            f"({', '.join(weights)})",
            "batch",
            "steps",
        ]
        if cell.reverse:
            args.append("reverse=True")
        args.append("lengths=lengths")
        # an LSTM's cell state is seen only in the state forward returns: its last step
        memory_state = forward and self.causal and cell.memory in self.delays
        if memory_state:
            args.append("last=return_state")
        out = names.name(cell.hidden)
        if memory_state:
            last = names.name(f"{cell.memory}/last", f"{cell.memory}_last")
            self.last_state[cell.memory] = last
            lines.append(f"{out}, (_, {last}) = runtime.cell({', '.join(args)})")
        else:
            lines.append(f"{out}, _ = runtime.cell({', '.join(args)})")
        values[cell.hidden] = out

    def _columns(self, edge_name: str, hidden: str, delay: int) -> tuple[list, list, int]:
        """Column ranges of an edge's linear on the cell's inputs and on its hidden state."""
        edge = self.edges[edge_name]
        ih, hh, lo = [], [], 0
        for port in edge.inputs:
            hi = lo + self.machine.space(port.space).shape[0]
            (hh if (port.space, port.delay) == (hidden, delay) else ih).append((lo, hi))
            lo = hi
        return ih, hh, lo

    def _cell_weights(self, names: Namespace, cell: Cell, label: str, lines: list[str]):
        """Statements assembling the kernel's weights; returns their expressions."""
        delay = -1 if cell.reverse else 1
        layer = {b.edge: self.layer_exprs[(b.edge, 0)] for b in (*cell.ih, *cell.hh)}

        def runs(blocks) -> list[tuple[str, int, int, bool]]:
            """Neighbouring rows of one edge (and the same bias flag) as one run."""
            merged: list[list] = []
            for b in blocks:
                if merged and merged[-1][0] == b.edge and merged[-1][2] == b.start:
                    if merged[-1][3] == b.bias:
                        merged[-1][2] = b.stop
                        continue
                merged.append([b.edge, b.start, b.stop, b.bias])
            return [tuple(run) for run in merged]

        def index(edge: str, start: int, stop: int, cols: tuple[int, int] | None) -> str:
            """``[rows]``, ``[rows, cols]`` or ``[:, cols]`` of an edge's weight; "" if all."""
            rows = _cut(start, stop, self.structure.shapes[edge][1][0])
            if cols is None or cols == (0, self._columns(edge, cell.hidden, delay)[2]):
                return "" if rows == ":" else f"[{rows}]"
            return f"[{rows}, {_cut(*cols, self._columns(edge, cell.hidden, delay)[2])}]"

        def cat(parts: list[str], dim: str = "") -> str:
            return parts[0] if len(parts) == 1 else f"torch.cat([{', '.join(parts)}]{dim})"

        def columns(matrix: str, ranges: list, size: int) -> str:
            cuts = [f"{matrix}[:, {_cut(lo, hi, size)}]" for lo, hi in ranges]
            return cat(cuts, ", dim=1")

        def assign(hint: str, expr: str) -> str:
            if expr.startswith("self.") and "(" not in expr:
                return expr
            var = names.name(f"/cell/{cell.stage}/{hint}", f"{label}_{hint}")
            lines.append(f"{var} = {expr}")
            return var

        def part(run, which: int) -> str:
            edge, start, stop, _ = run
            ranges = self._columns(edge, cell.hidden, delay)
            if len(ranges[which]) == 1:
                return f"{layer[edge]}.weight{index(edge, start, stop, ranges[which][0])}"
            matrix = f"{layer[edge]}.weight{index(edge, start, stop, None)}"
            return columns(matrix, ranges[which], ranges[2])

        ih_runs, hh_runs = runs(cell.ih), runs(cell.hh)
        same = [r[:3] for r in ih_runs] == [r[:3] for r in hh_runs]
        if same:  # every gate reads the inputs and the hidden state through one linear
            ih_cols, hh_cols, size = self._columns(cell.ih[0].edge, cell.hidden, delay)
            parts = [f"{layer[e]}.weight{index(e, a, b, None)}" for e, a, b, _ in ih_runs]
            w = assign("w", cat(parts))
            weights = [columns(w, ih_cols, size), columns(w, hh_cols, size)]
        else:
            weights = [
                assign("w_ih", cat([part(run, 0) for run in ih_runs])),
                assign("w_hh", cat([part(run, 1) for run in hh_runs])),
            ]
        biases = []
        for blocks in (cell.ih, cell.hh):
            if not any(b.bias for b in blocks):
                biases.append("None")
                continue
            parts, zeros = [], 0
            for edge, start, stop, bias in runs(blocks):
                if not bias:
                    zeros += stop - start
                    continue
                if zeros:
                    parts.append(f"{layer[edge]}.bias.new_zeros({zeros})")
                    zeros = 0
                parts.append(f"{layer[edge]}.bias{index(edge, start, stop, None)}")
            if zeros:
                parts.append(f"{parts[-1]}.new_zeros({zeros})")
            biases.append(cat(parts))
        if biases == ["None", "None"]:
            return weights
        if biases[1] == "None":
            return weights + [assign("b" if same else "b_ih", biases[0])]
        return weights + [assign("b_ih", biases[0]), assign("b_hh", biases[1])]
