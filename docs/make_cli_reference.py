"""Write docs/cli-reference.md from the typer app: `python docs/make_cli_reference.py`."""

import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).with_name("cli-reference.md")
HEADER = ("# `autotune`: the command-line reference\n\nGenerated from the typer app by "
          "`python docs/make_cli_reference.py` (typer's `utils docs`); [cli.md](cli.md) has the overview and the exit "
          "statuses.\n\n")

subprocess.run([sys.executable, "-m", "typer", "autotune.cli", "utils", "docs", "--name", "autotune", "--output",
                str(OUT)], check=True, capture_output=True)
text = OUT.read_text()
OUT.write_text(HEADER + "## " + text.split("# ", 1)[1])
