"""The benchmark: method × supervision × dataset rows on real data, and component ablations of those rows.

- :mod:`~weakseg.bench.protocol`: the protocol as data (profiles, shared overrides, datasets, rows); ``STANDARD``.
- :mod:`~weakseg.bench.rows`: a row's identity and recipe, row planning, and whether a record is current.
- :mod:`~weakseg.bench.labels`: the simulated weak labels of a dataset, once per label protocol.
- :mod:`~weakseg.bench.runner`: ``weakseg bench``: rows in child processes, run-folder claiming, ratios.
- :mod:`~weakseg.bench.ablate`: ``weakseg bench ablate``: the variants of ``weakseg/recipes/ablations/*.yaml``.
- :mod:`~weakseg.bench.docs`: ``docs/benchmarks.md`` from the rows' JSON.
"""
