"""AlphaGAN genotypes: one op per edge of the generator search space, as a JSON file.

Format (``gan.models.alphagan`` defines the cells and ops)::

    {"format": "sparsekit-alphagan-genotype/1",
     "cells": [{"up": [op, op], "normal": [op, op, op], "skip": []},
               {"up": [op, op], "normal": [op, op, op], "skip": [op]},
               {"up": [op, op], "normal": [op, op, op], "skip": [op, op]}],
     ...}                                     other top-level keys: free-form notes, ignored

``up``/``skip`` ops are nearest | bilinear | deconv; ``normal`` ops any of the extended space's
(``conv_1x1`` … ``none``). Loading is JSON only (no code runs) and every mistake is a
``ValueError`` naming the file and the entry that is wrong.
"""

from __future__ import annotations

import json
import os

from .alphagan import ALL_NORMAL_OPS, EDGE_KINDS, N_CELLS, UP_OPS, edge_count

FORMAT = "sparsekit-alphagan-genotype/1"
_ALLOWED = {"up": UP_OPS, "normal": ALL_NORMAL_OPS, "skip": UP_OPS}


def validate(genotype, source="genotype") -> dict:
    """Check ``genotype``'s structure and op names; returns it. ``source`` names it in errors."""
    if not isinstance(genotype, dict):
        raise ValueError(f"{source}: expected a JSON object with 'format' and 'cells', got "
                         f"{type(genotype).__name__}")
    if genotype.get("format") != FORMAT:
        raise ValueError(f"{source}: 'format' must be {FORMAT!r}, got {genotype.get('format')!r}")
    cells = genotype.get("cells")
    if not isinstance(cells, list) or len(cells) != N_CELLS:
        raise ValueError(f"{source}: 'cells' must be a list of {N_CELLS} cells, got {cells!r}")
    for k, cell in enumerate(cells):
        where = f"{source}: cells[{k}]"
        if not isinstance(cell, dict) or set(cell) != set(EDGE_KINDS):
            keys = sorted(cell) if isinstance(cell, dict) else type(cell).__name__
            raise ValueError(f"{where} must be an object with exactly the keys {list(EDGE_KINDS)}, got {keys}")
        for kind in EDGE_KINDS:
            ops, n = cell[kind], edge_count(kind, k)
            if not isinstance(ops, list) or len(ops) != n:
                raise ValueError(f"{where}.{kind} must be a list of {n} op names, got {ops!r}")
            for i, op in enumerate(ops):
                if op not in _ALLOWED[kind]:
                    raise ValueError(f"{where}.{kind}[{i}]: unknown op {op!r}; expected one of "
                                     f"{', '.join(_ALLOWED[kind])}")
    return genotype


def load(path: str) -> dict:
    """Read and validate a genotype file (JSON only: nothing in it is executed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"genotype file {path!r} does not exist")
    try:
        with open(path) as f:
            genotype = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON genotype ({e})") from None
    return validate(genotype, path)


def save(genotype: dict, path: str, **notes) -> None:
    """Write ``genotype`` (``{"cells": ...}``) with the format tag and any ``notes`` (JSON
    values: where it came from, final α entropies, ...)."""
    document = {"format": FORMAT, "cells": genotype["cells"], **notes}
    validate(document, path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
