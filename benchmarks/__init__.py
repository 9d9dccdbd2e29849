"""dprdm benchmarks (scripts; run as python benchmarks/bench_*.py). A regular package so that opacus 1.6.0's stray top-level
``benchmarks`` package in site-packages never shadows it."""
