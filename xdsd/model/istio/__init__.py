"""Typed, validated Istio config kinds (VirtualService, DestinationRule, ...).

Each kind module has `parse(issues, spec, path, ref) -> Typed | None`: it reads
the deep-frozen spec, reports every problem with its field path (errors reject
the object, so its last good version stays served; warnings name fields we do
not support yet), and returns a frozen dataclass. `registry.PARSERS` maps kinds
to these functions; the document parser calls them and keeps the result in
`ConfigObject.typed`.
"""
