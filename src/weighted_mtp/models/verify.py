"""Verifying a model folder: every byte hashed, every config cross-checked.

Works for the converted bases and the micro models alike, dispatching on metadata.json's
`format`: a Meta-format folder is checked against `params.json` and `meta_adapter.yaml`, a
Hugging Face one against `config.json`. Each check is independent: one failure does not hide
the others, and the report says which file to look at.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from weighted_mtp import progress
from weighted_mtp.checks import Report, listed
from weighted_mtp.errors import WmtpError
from weighted_mtp.models.architecture import compare_shapes, config_value_problem
from weighted_mtp.models.convert import all_finite
from weighted_mtp.models.formats import Architecture, format_named
from weighted_mtp.models.metadata import ModelMetadata, read_metadata
from weighted_mtp.models.safetensors_stream import dtype_code
from weighted_mtp.models.tokenizer import tokenizer_difference, tokenizer_facts
from weighted_mtp.models.tokenizer_agreement import agreement_corpus, check_agreement
from weighted_mtp.models.upstream_reader import open_files
from weighted_mtp.storage.freshness import Store
from weighted_mtp.storage.hashing import check_sha256sums, read_sha256sums
from weighted_mtp.storage.layout import Layout, ModelPaths

MAX_LISTED = 3


FileHash = Callable[[Path], str]


def verify_model(layout: Layout, name: str, *, store: Store | None = None) -> Report:
    """Check a model folder, reading every byte; the freshness store records the model as
    verified if every check passes, and forgets its record if one fails.

    `store` (default: a fresh one that re-reads every file) is shared by callers that hash
    the same files in other checks (`wmtp verify`), so each is read once per run; such a
    caller saves it."""
    records = store or Store(layout, trust_known=False)
    hash_file = records.sha256
    paths = layout.model(name)
    report = Report(f"model {name}")
    try:
        metadata = read_metadata(paths.metadata)
    except WmtpError as exc:
        report.add("metadata.json", False, exc.line(), [layout.relative(paths.metadata)])
        return report
    report.add("metadata.json", True, f"{metadata.format}, {metadata.dtype}")
    check = _checker(report, layout)
    check("SHA256SUMS", lambda: _check_sha256sums(paths, metadata, hash_file), paths.sha256sums)
    check(
        "recorded file hashes",
        lambda: _check_recorded_files(paths, metadata, hash_file),
        paths.root,
    )
    arch = check("configs agree", lambda: _check_configs(paths, metadata), paths.configs)
    header = check("safetensors header", lambda: _read_header(paths.weights), paths.weights)
    if arch is not None and header is not None:
        check("tensor names and shapes", lambda: _check_shapes(arch, header), paths.weights)
    if header is not None:
        check(
            "tensor dtypes",
            lambda: _check_dtypes(header, metadata.dtype, paths.weights),
            paths.weights,
        )
    if arch is not None:
        check("rope_theta", lambda: _check_rope_theta(paths, metadata, arch), paths.configs)
        check("tokenizer", lambda: _check_tokenizer(paths, metadata, arch), paths.tokenizer_model)
    check(
        "tokenizer shared", lambda: _check_sharing(layout, paths, metadata), paths.tokenizer_model
    )
    check(
        "tokenizer in transformers",
        lambda: _check_transformers_tokenizer(layout, paths),
        paths.tokenizer_dir,
    )
    check("raw files", lambda: _check_raw(paths, metadata, hash_file), paths.raw)
    if header is not None:
        check("no NaN/Inf", lambda: _check_finite(paths.weights), paths.weights)
    if report.ok:
        records.record_verified(name)
    else:
        records.clear(name)
    if store is None:
        records.save()
    return report


def _checker(report: Report, layout: Layout) -> Callable[..., Any]:
    """Run one check: it returns (detail, value) or raises WmtpError; failures are recorded."""

    def check(name: str, run: Callable[[], tuple[str, Any]], where: Path) -> Any:
        try:
            detail, value = run()
        except WmtpError as exc:
            report.add(name, False, exc.what, [_shown(layout, Path(exc.path or where))])
            return None
        report.add(name, True, detail)
        return value if value is not None else True

    return check


def _shown(layout: Layout, path: Path) -> str:
    return layout.relative(path) if layout.contains(path) else str(path)


def _problems(what: str, problems: list[str], path: Path) -> None:
    if problems:
        raise WmtpError(f"{what}: {listed(problems, MAX_LISTED)}", path=path)


# --- bytes ----------------------------------------------------------------------------------


def _check_sha256sums(
    paths: ModelPaths, metadata: ModelMetadata, hash_file: FileHash
) -> tuple[str, None]:
    results = check_sha256sums(paths.sha256sums, hash_file)
    _problems(
        "SHA256SUMS mismatch", [f"{n} {why}" for n, ok, why in results if not ok], paths.sha256sums
    )
    names = [n for n, _, _ in results]
    if paths.weights.name not in names:
        raise WmtpError(f"SHA256SUMS does not list {paths.weights.name}", path=paths.sha256sums)
    recorded = metadata.weights
    listed = read_sha256sums(paths.sha256sums)[paths.weights.name]
    if listed != recorded.sha256 or paths.weights.stat().st_size != recorded.size:
        raise WmtpError("weights differ from metadata.json's sha256/size", path=paths.weights)
    return f"{len(names)} file(s) match, as metadata.json records", None


def _check_recorded_files(
    paths: ModelPaths, metadata: ModelMetadata, hash_file: FileHash
) -> tuple[str, None]:
    recorded = {
        metadata.tokenizer.path: metadata.tokenizer.sha256,
        **metadata.files,
    }
    problems = []
    for relpath, expected in recorded.items():
        target = paths.file(relpath)
        if not target.is_file():
            problems.append(f"{relpath} missing")
        elif hash_file(target) != expected:
            problems.append(f"{relpath} changed")
    _problems("files differ from metadata.json", problems, paths.root)
    return f"{len(recorded)} config/tokenizer file(s) unchanged", None


def _check_raw(paths: ModelPaths, metadata: ModelMetadata, hash_file: FileHash) -> tuple[str, None]:
    recorded = metadata.raw_files
    if not recorded:
        return f"derived from {metadata.derived_from}; no raw files", None
    present = {rel: h for rel, h in recorded.items() if paths.raw_file(rel).is_file()}
    if not present:
        return "raw files removed after conversion; not checked", None
    problems = [
        f"{rel} changed"
        for rel, expected in present.items()
        if hash_file(paths.raw_file(rel)) != expected
    ]
    problems += [f"{rel} missing" for rel in recorded if rel not in present]
    _problems("raw files differ from metadata.json", problems, paths.raw)
    return f"{len(present)} upstream file(s) match", None


def _read_header(weights: Path) -> tuple[str, dict[str, tuple[str, tuple[int, ...]]]]:
    from safetensors import safe_open

    if not weights.is_file():
        raise WmtpError("weights file missing", path=weights)
    try:
        with safe_open(weights, framework="pt") as handle:
            header = {}
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                piece = handle.get_slice(name)
                header[name] = (piece.get_dtype(), tuple(piece.get_shape()))
    except Exception as exc:  # safetensors raises untyped errors for a bad header
        raise WmtpError(f"unreadable safetensors file ({exc})", path=weights) from None
    return f"{len(header)} tensors", header


def _check_shapes(arch: Architecture, header: dict[str, Any]) -> tuple[str, None]:
    actual = {name: shape for name, (_, shape) in header.items()}
    _problems(
        "weights do not match the configs",
        compare_shapes(arch.shapes, actual),
        arch.config_files[0],
    )
    return f"all {len(arch.shapes)} expected, none extra", None


def _check_dtypes(header: dict[str, Any], dtype: str, weights: Path) -> tuple[str, None]:

    code = dtype_code(dtype)
    wrong = [f"{name} is {d}" for name, (d, _) in header.items() if d != code]
    _problems(f"tensors not in the recorded dtype {dtype}", wrong, weights)
    return f"all {code}", None


def _check_finite(weights: Path) -> tuple[str, None]:

    bad = []
    with (
        open_files([weights]) as source,
        progress.task("scan for NaN/Inf", weights.stat().st_size, "bytes") as advance,
    ):
        for name in source.info:
            for chunk in source.chunks(name):
                if not all_finite(chunk):
                    bad.append(f"{name} has NaN or Inf")
                    break
                advance(chunk.numel() * chunk.element_size())
    _problems("non-finite values", bad, weights)
    return "every value finite", None


# --- configs --------------------------------------------------------------------------------


def _check_configs(paths: ModelPaths, metadata: ModelMetadata) -> tuple[str, Architecture]:
    fmt = format_named(metadata.format)
    arch = fmt.check_configs(paths, metadata.tokenizer.vocab_size, metadata.dtype)
    names = [path.name for path in arch.config_files] + ["metadata.json"]
    agree = f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{agree} agree", arch


def _upstream_rope_theta(paths: ModelPaths, metadata: ModelMetadata) -> float | None:
    """rope_theta of the upstream config the folder was converted from, if it is present."""
    if not metadata.raw_files:
        return None
    fmt = format_named(metadata.format)
    try:
        upstream = fmt.upstream(paths, metadata.tokenizer.vocab_size)
    except WmtpError:
        return None  # raw files removed after conversion
    return upstream.rope_theta


def _check_rope_theta(
    paths: ModelPaths, metadata: ModelMetadata, arch: Architecture
) -> tuple[str, None]:
    upstream = _upstream_rope_theta(paths, metadata)
    problem = config_value_problem("rope_theta", upstream) if upstream is not None else None
    if problem:
        raise WmtpError(f"the upstream config's {problem}", path=paths.raw)
    if upstream is not None and float(upstream) != float(arch.rope_theta):
        raise WmtpError(
            f"rope_theta is {arch.rope_theta}, the upstream config says {upstream}",
            path=arch.config_files[0],
        )
    return f"{arch.rope_theta}" + (" (as upstream)" if upstream is not None else ""), None


def _check_tokenizer(
    paths: ModelPaths, metadata: ModelMetadata, arch: Architecture
) -> tuple[str, None]:

    facts = tokenizer_facts(paths.tokenizer_model).to_dict()
    recorded = metadata.tokenizer.facts()
    problems = [
        f"{key} is {facts[key]} in the model file, {recorded[key]} in metadata.json"
        for key in facts
        if facts[key] != recorded[key]
    ]
    if facts["vocab_size"] != arch.vocab_size:
        problems.append(
            f"the tokenizer has {facts['vocab_size']} pieces, the model's vocab "
            f"is {arch.vocab_size}"
        )
    _problems("tokenizer mismatch", problems, paths.tokenizer_model)
    return f"vocab {facts['vocab_size']} = model vocab", None


def _check_sharing(layout: Layout, paths: ModelPaths, metadata: ModelMetadata) -> tuple[str, None]:

    if metadata.tokenizer_difference is not None:
        raise WmtpError(f"not shared: {metadata.tokenizer_difference}", path=paths.tokenizer_model)
    details = []
    ours = paths.tokenizer_model
    trimmed = metadata.tokenizer_trimmed
    if trimmed:
        base = layout.model(trimmed.base).tokenizer_model
        if base.is_file():
            replaced = trimmed.replaced
            difference = tokenizer_difference(ours, base, prefix=True, replaced=replaced)
            if difference:
                raise WmtpError(f"not a trimmed copy of {trimmed.base}'s: {difference}", path=ours)
            details.append(f"first {trimmed.vocab_size} pieces of {trimmed.base}'s")
        ours = base
    shared = metadata.tokenizer_shared_with
    if shared is None:
        return "; ".join(details) or "own tokenizer", None
    other = layout.model(shared).tokenizer_model
    if not other.is_file() or not ours.is_file():
        details.append(f"recorded as {shared}'s ({shared} not present to re-check)")
    elif (difference := tokenizer_difference(ours, other)) is not None:
        raise WmtpError(f"recorded as shared with {shared}, but: {difference}", path=ours)
    else:
        details.append(f"same as {shared}'s")
    return "; ".join(details), None


def _check_transformers_tokenizer(layout: Layout, paths: ModelPaths) -> tuple[str, None]:

    corpus = agreement_corpus(layout)
    return check_agreement(paths.tokenizer_dir, paths.tokenizer_model, corpus).detail(), None
