"""Reading YAML manifests (files, directories, multi-document) into the model.

A document that fails validation is rejected whole with an error naming the
file, the document number (1-based) and the field; callers decide whether one
bad document stops everything (``vppagent eval``) or is reported and skipped
(the file datastore of a running agent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from vppagent.manifests.calico import CALICO_KINDS, STRICT_SPEC_KINDS
from vppagent.manifests.fields import Fields
from vppagent.manifests.k8s import K8S_KINDS
from vppagent.model.errors import ValidationError
from vppagent.model.resources import Resource

CALICO_API = "projectcalico.org/v3"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def parse_object(obj: Any, path: str = "") -> list[Resource]:
    """One Kubernetes/Calico object (or a ``List``) → resources; raises ValidationError."""
    top = Fields(obj, path)
    api = top.str("apiVersion", required=True)
    kind = top.str("kind", required=True)
    if kind == "List" or (kind.endswith("List") and top.has("items")):
        out: list[Resource] = []
        for p, item in top.list("items"):
            out.extend(parse_object(item, p))
        return out
    meta = top.sub("metadata")
    if api == CALICO_API:
        parser = CALICO_KINDS.get(kind)
        if parser is None:
            raise ValidationError(top.at("kind"), f"unsupported {CALICO_API} kind {kind!r}")
        spec = top.sub("spec", strict=kind in STRICT_SPEC_KINDS)
        return [parser(meta, spec)]
    k8s = K8S_KINDS.get((api, kind))
    if k8s is None:
        raise ValidationError(top.at("kind"), f"unsupported kind {kind!r} of apiVersion {api!r}")
    spec = top if kind == "EndpointSlice" else top.sub("spec")
    resource = k8s(meta, spec, top.sub("status"))
    return [resource] if resource is not None else []


@dataclass(frozen=True)
class Document:
    source: str          # "file.yaml#N"
    body: Any


@dataclass
class LoadResult:
    resources: list[Resource] = field(default_factory=list)
    errors: list[ValidationError] = field(default_factory=list)
    sources: dict[str, list[Resource]] = field(default_factory=dict)


def manifest_files(path: Path) -> list[Path]:
    """The manifest files under ``path`` in a stable order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    return [path]


# libyaml's parser when PyYAML was built with it: ~7x faster than the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

FileKey = tuple[int, int, int]
LoadCache = dict[str, tuple[FileKey, "LoadResult"]]


def read_documents(path: Path, label: str | None = None) -> Iterator[Document]:
    """Every non-empty YAML document of one file."""
    name = label or path.name
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValidationError("", f"cannot read: {exc.strerror}", name) from None
    try:
        docs = list(yaml.load_all(text, Loader=_YAML_LOADER))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ValidationError("", f"invalid YAML: {where}{getattr(exc, 'problem', exc)}", name) from None
    for i, doc in enumerate(docs, start=1):
        if doc is not None:
            yield Document(f"{name}#{i}", doc)


def parse_documents(docs: Iterable[Document]) -> LoadResult:
    """Parse documents independently: a bad one is reported, the others kept."""
    result = LoadResult()
    for doc in docs:
        try:
            resources = parse_object(doc.body)
        except ValidationError as exc:
            result.errors.append(exc.with_source(doc.source))
            continue
        result.sources[doc.source] = resources
        result.resources.extend(resources)
    return result


def _load_file(file: Path, label: str) -> LoadResult:
    try:
        docs = list(read_documents(file, label))
    except ValidationError as exc:
        return LoadResult(errors=[exc])
    return parse_documents(docs)


def load_path(path: str | Path, cache: LoadCache | None = None) -> LoadResult:
    """Load every manifest below ``path``; YAML syntax errors are reported per file.

    With ``cache`` (kept by the caller between calls), a file whose inode,
    size and mtime are unchanged is not read or parsed again: one changed
    file in a big datastore costs that file, not the whole directory.
    """
    root = Path(path)
    if not root.exists():
        raise ValidationError("", "no such file or directory", str(root))
    result = LoadResult()
    seen: set[str] = set()
    for file in manifest_files(root):
        label = str(file.relative_to(root)) if root.is_dir() else file.name
        part: LoadResult | None = None
        if cache is not None:
            try:
                st = file.stat()
            except OSError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            seen.add(label)
            hit = cache.get(label)
            if hit is not None and hit[0] == key:
                part = hit[1]
            else:
                part = _load_file(file, label)
                cache[label] = (key, part)
        if part is None:
            part = _load_file(file, label)
        result.resources.extend(part.resources)
        result.errors.extend(part.errors)
        result.sources.update(part.sources)
    if cache is not None:
        for gone in cache.keys() - seen:
            del cache[gone]
    return result


def load_strict(path: str | Path) -> list[Resource]:
    """Load manifests; the first error is raised (nothing is returned half-loaded)."""
    result = load_path(path)
    if result.errors:
        raise result.errors[0]
    return result.resources


def load_objects(objects: Iterable[Mapping[str, Any]], source: str = "inline") -> list[Resource]:
    """Parse in-memory objects (tests, conformance files); the first error is raised."""
    result = parse_documents(Document(f"{source}#{i}", o) for i, o in enumerate(objects, start=1))
    if result.errors:
        raise result.errors[0]
    return result.resources
