"""machc.runtime: the torch-only support library that generated modules may import.

It never imports the compiler. Feed-forward machines need nothing from it
today; it is the home of layers torch lacks, the time loop and solvers as the
language grows.
"""
