"""compiler/digraph.py: the strongly connected components agree with networkx's, and the
graph hands networkx the same graph the check used to build with it."""

from __future__ import annotations

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st
from machc.digraph import Graph, strongly_connected

arcs = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=40)


def build(n: int, pairs: list[tuple[int, int]]) -> Graph:
    graph = Graph(("space", i) for i in range(n))
    for k, (u, v) in enumerate(pairs):
        graph.add_arc(("space", u), ("space", v), {"k": k})
    return graph


def both(n: int, pairs: list[tuple[int, int]]) -> tuple[Graph, nx.DiGraph]:
    """The graph on n nodes with the arcs ``pairs`` (taken mod n), and networkx's."""
    pairs = [(u % n, v % n) for u, v in pairs]
    reference = nx.DiGraph()
    reference.add_nodes_from((("space", i), {"index": i}) for i in range(n))
    reference.add_edges_from(
        (("space", u), ("space", v), {"k": k}) for k, (u, v) in enumerate(pairs)
    )
    return build(n, pairs), reference


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 12), pairs=arcs)
def test_components_are_networkx_components(n, pairs) -> None:
    graph, reference = both(n, pairs)
    mine = sorted(sorted(c) for c in strongly_connected(graph))
    theirs = sorted(sorted(c) for c in nx.strongly_connected_components(reference))
    assert mine == theirs


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 12), pairs=arcs)
def test_to_networkx_keeps_nodes_arcs_data_and_their_order(n, pairs) -> None:
    graph, reference = both(n, pairs)
    made = graph.to_networkx()
    assert list(made.nodes(data=True)) == list(reference.nodes(data=True))
    assert list(made.edges(data=True)) == list(reference.edges(data=True))
    for node in reference:  # the order paths are searched in
        assert list(made.predecessors(node)) == list(reference.predecessors(node))
    part = {("space", i) for i in range(0, n, 2)}
    sub = graph.to_networkx(part)
    assert sorted(sub.edges(data=True)) == sorted(reference.subgraph(part).edges(data=True))
    mine = sorted((u, v, data["k"]) for u, v, data in graph.arcs(part))
    assert mine == sorted(reference.subgraph(part).edges(data="k"))


def test_a_long_chain_and_a_long_cycle_need_no_recursion() -> None:
    n = 100_000
    chain = build(n, [(i, i + 1) for i in range(n - 1)])
    assert len(strongly_connected(chain)) == n
    ring = build(n, [(i, (i + 1) % n) for i in range(n)])
    assert [len(c) for c in strongly_connected(ring)] == [n]
