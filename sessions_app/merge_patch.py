"""JSON Merge Patch (RFC 7396) for the ``data`` object of a session."""


def merge_patch(target, patch):
    """Return ``target`` with ``patch`` applied; neither argument is changed."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
