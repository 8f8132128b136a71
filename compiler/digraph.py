"""The hypergraph of a machine as a plain directed graph, and its strongly connected
components: what a check needs of every machine over time or with a ``solve``.

NOTE: start-up time. Importing networkx took a third of ``machc check`` on a small machine
over time (about 70 ms of 280: docs/benchmarks.md, "Start-up time"), and a machine over
time needs its recurrences (the strongly connected components of its space-time
hypergraph) on every check. So the graph is a dictionary of arcs and the components come
from Tarjan's algorithm here; networkx (:meth:`Graph.to_networkx`) still spells out a
cycle for an error message (``find_cycle``, ``shortest_path``).
``tests/unit/test_digraph.py`` checks the components against networkx's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx as nx

Node = tuple[str, object]  # ("space", name), ("edge", name)


class Graph:
    """Nodes and arcs in the order they were added (``index``: a node's position), each
    arc with its data."""

    __slots__ = ("index", "succ", "pred", "_arcs")

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.index: dict[Node, int] = {}
        self.succ: dict[Node, dict[Node, dict]] = {}
        self.pred: dict[Node, dict[Node, dict]] = {}
        self._arcs: dict[tuple[Node, Node], int] = {}  # the order arcs were added in
        for node in nodes:
            self.add_node(node)

    def add_node(self, node: Node) -> None:
        if node not in self.index:
            self.index[node] = len(self.index)
            self.succ[node] = {}
            self.pred[node] = {}

    def add_arc(self, u: Node, v: Node, data: dict) -> None:
        """The arc ``u -> v`` with ``data``, replacing any arc ``u -> v`` there was."""
        self.add_node(u)
        self.add_node(v)
        self.succ[u][v] = self.pred[v][u] = data
        self._arcs.setdefault((u, v), len(self._arcs))

    def successors(self, node: Node) -> Iterable[Node]:
        return self.succ[node]

    def predecessors(self, node: Node) -> Iterable[Node]:
        return self.pred[node]

    def arcs(self, nodes: set[Node] | None = None) -> Iterator[tuple[Node, Node, dict]]:
        """Every arc ``(u, v, data)``, in the order added; with ``nodes``, those between
        two of them (in time of their arcs, in no particular order)."""
        if nodes is None:
            for u, v in self._arcs:
                yield u, v, self.succ[u][v]
            return
        for u in nodes:
            for v, data in self.succ[u].items():
                if v in nodes:
                    yield u, v, data

    def to_networkx(self, nodes: set[Node] | None = None) -> nx.DiGraph:
        """The graph (or the part of it on ``nodes``) for networkx's algorithms; each node
        keeps its ``index`` as a node attribute."""
        import networkx as nx  # lazily: only an error message needs it

        graph = nx.DiGraph()
        chosen = self.index if nodes is None else sorted(nodes, key=self.index.__getitem__)
        graph.add_nodes_from((node, {"index": self.index[node]}) for node in chosen)
        # in the order added, as networkx would have had them: its paths follow that order
        graph.add_edges_from(sorted(self.arcs(nodes), key=lambda arc: self._arcs[arc[:2]]))
        return graph


def strongly_connected(graph: Graph) -> list[set[Node]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm, without
    recursion: a chain of 100,000 edges is as deep as it is long)."""
    index: dict[Node, int] = {}  # the order nodes are first reached in
    low: dict[Node, int] = {}  # the earliest node on the stack each one reaches
    stack: list[Node] = []
    on_stack: set[Node] = set()
    components: list[set[Node]] = []
    for root in graph.index:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(graph.succ[root]))]
        while work:
            node, after = work[-1]
            for child in after:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.succ[child])))
                    break
                if child in on_stack and index[child] < low[node]:
                    low[node] = index[child]
            else:  # every successor of node is done
                work.pop()
                if work and low[node] < low[work[-1][0]]:
                    low[work[-1][0]] = low[node]
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components
