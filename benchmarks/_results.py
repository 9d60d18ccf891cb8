"""What the benchmark scripts share: writing their results file."""
import json
import os


def write_result(path: str, result: dict) -> None:
    """``result`` as indented JSON at ``path`` (folders made as needed); says where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print("wrote", path)
