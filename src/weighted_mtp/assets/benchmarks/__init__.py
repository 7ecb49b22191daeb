"""The benchmarks, one module each: every module of this package defines `BENCHMARK`, an
instance of `weighted_mtp.assets.benchmark.Benchmark`. Adding a benchmark is adding a
module here and a catalog row of the same name; nothing lists them (`discover`)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from weighted_mtp.assets.benchmark import Benchmark
from weighted_mtp.errors import WmtpError


def discover() -> tuple[Benchmark, ...]:
    """Every module's `BENCHMARK`, sorted by (order, name). A module without one, or two
    benchmarks of one name, is one error naming the module."""
    found: dict[str, tuple[Benchmark, str]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        where = Path(module.__file__ or module_info.name)
        benchmark = getattr(module, "BENCHMARK", None)
        if not isinstance(benchmark, Benchmark) or not getattr(benchmark, "name", ""):
            raise WmtpError(
                "a benchmark module does not define BENCHMARK, a named Benchmark instance",
                path=where,
                hint="see weighted_mtp/assets/benchmark.py for the protocol",
            )
        if benchmark.name in found:
            raise WmtpError(
                f"a second benchmark named {benchmark.name!r} (the first is in "
                f"{found[benchmark.name][1]})",
                path=where,
                hint="give each benchmark module its own name",
            )
        found[benchmark.name] = (benchmark, where.name)
    return tuple(sorted((b for b, _ in found.values()), key=lambda b: (b.order, b.name)))
