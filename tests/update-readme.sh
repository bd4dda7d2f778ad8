#!/usr/bin/env bash
# Refresh the generated config reference in README.md (between its config-reference markers).
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(.venv/bin/python -m cri.cli config --reference)
.venv/bin/python - "$table" <<'PY'
import re, sys
text = open("README.md").read()
start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
new = f"{start}\n{sys.argv[1]}\n{end}"
text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: new, text, flags=re.S)
open("README.md", "w").write(text)
PY
