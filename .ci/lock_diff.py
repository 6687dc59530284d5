"""Print the packages whose versions in a `pip freeze` differ from requirements.lock."""

import re
import sys


def pins(path: str) -> dict[str, str]:
    found = {}
    for line in open(path, encoding="utf-8"):
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


lock, fresh = pins(sys.argv[1]), pins(sys.argv[2])
fresh.pop("pip", None)  # the venv's own installer, never locked
changes = [
    f"{name} {lock.get(name, '(not in lock)')} -> {fresh.get(name, '(not installed)')}"
    for name in sorted(set(lock) | set(fresh))
    if lock.get(name) != fresh.get(name)
]
print(", ".join(changes))
