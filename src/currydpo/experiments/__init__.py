"""Experiments: orchestration above the library. `compare` trains and evaluates a grid of arms,
`report` turns results into tables and plots, `demo` runs the comparison on the embedded world,
`bench` times currydpo against TRL. Nothing below this layer imports from it."""
