"""A fuzzer for machc: every input gets a proper diagnostic or a module that works.

Inputs come from four kinds of generators: random well-formed machines
(:mod:`.wellformed`), ill-formed and hostile ones (:mod:`.illformed`),
token-level mutations of the examples, the standard library, the goldens
and the docs (:mod:`.mutate`), and raw bytes (:mod:`.raw`). Workers
(:mod:`.worker`, :mod:`.pool`) check, compile and run each input and say
which :class:`~.outcomes.Outcome` it came to; :mod:`.runner` groups the
failures, minimises them (:mod:`.minimise`) and writes them out.

    python -m tests.fuzz --n 100000 --seed 1 --out fuzz-out --jobs 2

The package imports neither torch nor the compiler at import time; the
workers do. See docs/reliability.md.
"""
