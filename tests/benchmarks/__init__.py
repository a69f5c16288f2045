"""On-demand benchmarks (`make bench`); skipped unless pytest is run with `-m benchmark`."""
