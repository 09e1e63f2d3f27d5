"""Print pip constraints pinning every `>=` floor in pyproject.toml (dependencies and extras): the oldest releases
splice declares, which `.ci/run` installs in its second venv. A floor written in pyproject is a floor tested."""

import re
import sys
from pathlib import Path

import tomllib

project = tomllib.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    requirements += extra
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+).*", requirement)
    if match:
        print(f"{match[1]}=={match[2]}")
