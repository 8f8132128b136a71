#!/bin/sh
# Redraws the pictures in docs/images from examples/*.mach with `machc graph`.
# Needs Graphviz's dot and matplotlib (pip install -e '.[graph]'). Run from anywhere:
#   sh docs/images/generate.sh
set -eu
cd "$(dirname "$0")/../.."
MACHC=${MACHC:-.venv/bin/machc}
for source in examples/*.mach; do
    name=$(basename "$source" .mach)
    "$MACHC" graph "$source" -o "docs/images/$name.png" 2>/dev/null
    "$MACHC" graph --matrix "$source" -o "docs/images/$name-matrix.png" 2>/dev/null
done
"$MACHC" graph --matrix --units examples/autoencoder.mach -o docs/images/autoencoder-units.png
# Machines used as edges, opened up: one frame per sub-machine edge.
for name in net std_tour; do
    "$MACHC" graph --expand "examples/$name.mach" -o "docs/images/$name-expanded.png"
done
